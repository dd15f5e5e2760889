"""The ``fastmae`` entry point: help, one-line argument errors, ``python -m fastmae``."""

import subprocess
import sys

import pytest

from fastmae.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["visualize", "--help"],
                                  ["mask", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: fastmae" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["train"], "argument COMMAND: invalid choice: 'train'"),
    (["pretrain", "--batch-size", "0"], "argument --batch-size: must be in (0, inf), got 0"),
    (["pretrain", "--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
    (["pretrain", "--blr", "nan"], "argument --blr: must be in (0.0, inf), got nan"),
    (["pretrain", "--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
    (["pretrain", "--bogus"], "unrecognized arguments: --bogus"),
    (["visualize", "--images", "a.png"], "the following arguments are required: --checkpoint"),
])
def test_argument_errors_are_one_line_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fastmae: error: ") and message in err


def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastmae", "mask", "--images", str(tmp_path / "x.png")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"fastmae: error: image not found: {tmp_path / 'x.png'}\n"
