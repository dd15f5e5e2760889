"""The ``fastmae`` entry point: help, one-line argument errors, ``python -m fastmae``."""

import subprocess
import sys

import pytest

from fastmae.cli import main

pytestmark = pytest.mark.usefixtures("cpu_default_device")  # see tests/conftest.py


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["visualize", "--help"],
                                  ["mask", "--help"], ["export", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: fastmae" in out
    assert "``" not in out  # the docstrings' reST literals are shown as plain text
    assert "(default " not in out  # one "(default: X)", added by the formatter, per option


@pytest.mark.parametrize("argv", [["--help"], ["no-such-command"], []])
def test_the_command_list_imports_no_command(argv):
    # Only the named command's module is imported; most import torch, which takes seconds.
    code = ("import sys\nfrom fastmae.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:  # --help\n    rc = e.code\n"
            "assert 'torch' not in sys.modules and 'fastmae.cli.pretrain' not in sys.modules\nsys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode in (0, 2), result.stderr
    assert ("usage: fastmae" in result.stdout) == (argv == ["--help"])


def test_every_option_has_help():
    from fastmae.cli import build_parser

    _, subparsers = build_parser()
    for name, parser in subparsers.items():
        bare = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
        assert not bare, f"{name}: {bare}"


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["train"], "argument COMMAND: invalid choice: 'train'"),
    # Counts and amounts say what they must be in words, not as an interval to infinity.
    (["pretrain", "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["pretrain", "--num-workers", "-1"], "argument --num-workers: must be a non-negative integer, got -1"),
    (["pretrain", "--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
    (["pretrain", "--blr", "nan"], "argument --blr: must be a positive number, got nan"),
    (["pretrain", "--min-lr", "-1"], "argument --min-lr: must be a non-negative number, got -1"),
    (["pretrain", "--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
    (["pretrain", "--bogus"], "unrecognized arguments: --bogus (see 'fastmae pretrain --help')"),
    (["pretrain", "--seed", "-5"], "argument --seed: must be an integer in [0, 2**32), got -5"),
    (["pretrain", "--seed", "99999999999"], "argument --seed: must be an integer in [0, 2**32), got 9999"),
    (["visualize", "--images", "a.png"], "the following arguments are required: --checkpoint"),
])
def test_argument_errors_are_one_line_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fastmae: error: ") and message in err


@pytest.mark.slow  # a new interpreter imports torch
def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastmae", "mask", "--images", str(tmp_path / "x.png")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"fastmae: error: image not found: {tmp_path / 'x.png'}\n"
