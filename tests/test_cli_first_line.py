"""``fastmae pretrain`` says what it will do before it imports torch (seconds on a 2-core machine).

The timing itself depends on the machine's load; what does not is the order: the plan line is
printed before torch's import starts, which a fresh interpreter reports through an import hook. The
seconds from the process start to that line are printed (``pytest -s``) for the record.
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import fastmae
from fastmae.cli import build_parser, config, parse_args, pretrain_options
from fastmae.cli.distributed import DistInfo
from fastmae.cli.pretrain_options import plan_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_STARTS = "<torch import starts>"

# A fresh interpreter running ``python -m fastmae ARGS`` that prints TORCH_STARTS when torch's import begins.
CHILD = textwrap.dedent(f"""
    import runpy, sys

    class Watch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                print({TORCH_STARTS!r}, flush=True)
                sys.meta_path.remove(self)
            return None

    sys.meta_path.insert(0, Watch())
    sys.argv = ["fastmae", *sys.argv[1:]]
    runpy.run_module("fastmae", run_name="__main__", alter_sys=True)
""")


def first_lines(argv, cwd, count=2):
    """The first ``count`` lines ``python -m fastmae argv`` prints on stdout, and the seconds from its
    start to the first; the process is killed once they are read (it would go on to train), so it
    never gets far into torch's import."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        lines = [proc.stdout.readline().rstrip("\n")]
        seconds = time.perf_counter() - t0
        lines += [proc.stdout.readline().rstrip("\n") for _ in range(count - 1)]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return lines, seconds


def test_the_main_job_names_its_plan_before_torch_is_imported(tmp_path):
    # The README's main job, `fastmae pretrain`, in a directory where output/pretrain holds a run.
    (tmp_path / "output" / "pretrain").mkdir(parents=True)
    (tmp_path / "output" / "pretrain" / "log.txt").write_text("")
    lines, seconds = first_lines(["pretrain"], tmp_path)
    epochs = pretrain_options.DEMO_RECIPE["epochs"]
    assert lines == [f"fastmae pretrain: mae_vit_tiny_patch4, {epochs} epochs on the procedural set "
                     f"(2048 images), into {os.path.join('output', 'pretrain-2')}; importing PyTorch...",
                     TORCH_STARTS]
    print(f"first line {seconds:.2f}s after the process started (load average {os.getloadavg()[0]:.1f})")


def test_no_plan_line_where_the_words_leave_it_open(tmp_path):
    # --resume: the checkpoint holds the plan, known only once torch has read it.
    lines, _ = first_lines(["pretrain", "--resume", "run/checkpoint-last.pth"], tmp_path, count=1)
    assert lines == [TORCH_STARTS]


def test_import_fastmae_does_not_import_torch():
    code = ("import sys, fastmae, fastmae.cli, fastmae.cli.pretrain_options; "
            "assert 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_public_names_resolve():
    assert all(getattr(fastmae, name) is not None for name in fastmae.__all__)
    assert set(fastmae.__all__) <= set(dir(fastmae))
    assert fastmae.model.MODELS is fastmae.MODELS and fastmae.data.ProceduralImages  # submodules too
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        fastmae.no_such_name


def test_the_torch_free_tables_match_their_sources():
    assert sorted(pretrain_options.MODEL_NAMES) == sorted(fastmae.MODELS)


def test_the_plan_parser_lacks_only_the_multiband_options():
    # An option the plan parser does not know makes plan_line give up (an unknown word): it must be
    # one that needs torch to define, not one a user of the main job passes.
    import argparse

    from fastmae.cli import bands

    def options(add):
        parser = argparse.ArgumentParser(add_help=False)
        add(parser)
        return {s for a in parser._actions for s in a.option_strings}

    _, subparsers = build_parser()
    full = {s for a in subparsers["pretrain"]._actions for s in a.option_strings} - {"-h", "--help"}
    assert full - options(pretrain_options.add_arguments) == options(bands.add_arguments)


@pytest.mark.parametrize("words", [
    [],
    ["--epochs", "3", "--output-dir", "elsewhere"],
    ["--model", "mae_vit_base_patch16", "--data", "{data}"],
    ["--model", "mae_vit_micro_patch4", "--num-images", "64", "--batch-size", "8", "--blr", "1e-3"],
    ["--data_path", "{root}", "--output_dir", "out", "--batch_size", "8", "--start_epoch", "3"],  # official names
])
def test_the_plan_line_says_what_the_run_resolves(tmp_path, monkeypatch, words):
    (tmp_path / "data").mkdir()
    for part in ("train", "val"):
        (tmp_path / "root" / part).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    words = [w.format(data=tmp_path / "data", root=tmp_path / "root") for w in words]
    run = config.resolve(parse_args(["pretrain", *words]), DistInfo(), torch.device("cpu"))
    data = run.data or f"the procedural set ({run.num_images} images)"
    assert plan_line(words) == (f"fastmae pretrain: {run.model}, {run.epochs} epochs on {data}, into "
                                f"{run.output_dir}; importing PyTorch...")


@pytest.mark.parametrize("words", [
    ["--resume", "run/checkpoint-last.pth"],  # the plan is in the checkpoint
    ["--help"], ["-h"],
    ["--epoch", "3"],  # an abbreviation: the full parser decides what it means
    ["--demo", "multiband"], ["--in-chans", "1"],  # options defined with torch (fastmae.cli.bands)
    ["--model", "mae_vit_nano"],  # not a model: the full parse says so, in one line
    ["--epochs", "0"], ["--bogus"],  # errors: the full parse reports them
])
def test_no_plan_line_where_the_words_leave_it_open_or_are_wrong(words):
    assert plan_line(words) is None
