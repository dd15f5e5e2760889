"""The GPU report (benchmarks/gpu_report.sh, benchmarks/report.py) never loses what was measured.

The report is read from what a run leaves: pytest's verbose logs (cut or whole) and one JSON line per
benchmark. Rows here are shaped as the benchmarks write them (``benchmarks/conftest.py``); the last
test runs the whole script on the CPU, as the GPU machine would, with the install made to fail and a
benchmark made to fail after its timing.
"""

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]

SHAPE = {"model": "mae_vit_base_patch16", "N": 256, "C": 3, "H": 224, "W": 224, "p": 16, "L": 196, "K": 49,
         "M": 147, "P": 768, "D": 768, "Dd": 512, "mask_ratio": 0.75}


def op_row(provider, mode="fwdbwd", ms=1.0, **extra):
    info = {"op": "decoder_input", "variant": "decoder_input", "provider": provider, "mode": mode, "dtype": "bf16",
            "shape": SHAPE, "median_ms": ms, "minimal_bytes": 130.5e6, "effective_gbps": 130.5 / ms,
            "pct_of_copy_bw": 4.0, "peak_mem_mb": 300.0, "rounds": 10,
            "timer": "CUDA events around the call, host queued ahead, L2 flushed before each call", **extra}
    return {"test": f"benchmarks/test_bench_decoder_input.py::test_decoder_input[{provider}-{mode}]", "table": "ops",
            "outcome": "passed", "when": "call", "extra_info": info}


def crop_row(provider, images_per_s):
    info = {"provider": provider, "images": 256, "image_hw": [375, 500], "out_side": 224, "dtype": "bfloat16",
            "median_ms": 256e3 / images_per_s, "images_per_s": images_per_s, "effective_gbps": 50.0,
            "device": "NVIDIA H100", "torch": "2.11.0"}
    return {"test": f"benchmarks/test_bench_resized_crop.py::test_resized_crop[imagenet_to_224_bf16-{provider}]",
            "table": "resized_crop", "outcome": "passed", "when": "call", "extra_info": info}


def step_row(arm, images_per_s, **extra):
    info = {"model": "mae_vit_base_patch16", "arm": arm, "batch": 256, "images_per_s": images_per_s,
            "step_ms": 256e3 / images_per_s, "mfu": 0.3, "device": "NVIDIA H100", "torch": "2.11.0",
            "triton": "3.6.0", "amp": "bf16 autocast", "mask_ratio": 0.75, "norm_pix_loss": True,
            "attention": "F.scaled_dot_product_attention", "optimizer": "AdamW (fused)", "timer": "CUDA events",
            "peak_bf16_tflops_spec": 989.4, **extra}
    return {"test": f"benchmarks/test_bench_train_step.py::test_train_step[{arm}]", "table": "train_step",
            "outcome": "passed", "when": "call", "extra_info": info}


def write_run(workdir: Path, rows, extra_lines=(), env=None):
    """A work folder as gpu_report.sh leaves it: the environment, the install line, the JSONL."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "env.json").write_text(json.dumps(env or {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda",
                                                         "driver": "570.1", "copy_gbps": 3000.0,
                                                         "gemm_tflops": 700.0}))
    (workdir / "install.txt").write_text("installed: pip install -e .\n")
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    (workdir / "bench.jsonl").write_text("\n".join(lines) + "\n")


def summary_of(workdir: Path) -> tuple[dict, str]:
    rep = report.build_report(workdir)
    return rep, report.summary_markdown(rep)


def test_a_cut_pytest_run_still_names_its_failures(tmp_path):
    # Verbose lines of a run killed at its limit: no pytest summary line; plain and xdist formats.
    (tmp_path / "kernel_tests.log").write_text(
        "tests/test_patchify.py::test_patchify[a-1] PASSED                 [  1%]\n"
        "tests/test_patchify.py::test_patchify[b-2] FAILED                 [  2%]\n"
        "[gw1] [  3%] PASSED tests/test_masking_ids.py::test_ids[4]\n"
        "[gw0] [  4%] ERROR tests/test_decoder_input.py::test_grad[bf16]\n"
        "[gw0] [  5%] SKIPPED tests/test_reproducibility.py::test_big\n"
        # ids with spaces (parametrised messages), each format (xdist ends a line with a space), a skip
        # with its reason, and -rfE's short summary line
        "tests/test_multiband.py::test_opts[--mean has 1 value(s)] PASSED [  6%]\n"
        "[gw1] [  7%] FAILED tests/test_patchify.py::test_bad_input[x has 47] \n"
        "tests/test_resized_crop.py::test_big SKIPPED (needs CUDA)          [  8%]\n"
        "FAILED tests/test_patchify.py::test_bad_input[x has 47] - AssertionError: boom\n"
        "[gw0] [  9%] FAILED tests/test_patchify.py::test_bad_input[p - 1 < 0] \n"
        "FAILED tests/test_patchify.py::test_bad_input[p - 1 < 0] - ValueError: p - 1\n"
        "ERROR tests/test_broken.py - ImportError: no module\n"  # a collection error: no verbose line
        "ERROR    fastmae.ops:ops.py:12 a captured log line, not a test\n"
        "tests/test_patchify.py:88: AssertionError\n"
        "KeyboardInterrupt\n")
    (tmp_path / "kernel_tests.rc").write_text("124\n")
    got = report.pytest_log(tmp_path, "kernel_tests")
    assert got["counts"] == {"passed": 3, "failed": 3, "error": 2, "skipped": 2}
    assert got["failed"] == ["tests/test_patchify.py::test_patchify[b-2]",
                             "tests/test_decoder_input.py::test_grad[bf16]",
                             "tests/test_patchify.py::test_bad_input[x has 47]",
                             "tests/test_patchify.py::test_bad_input[p - 1 < 0]", "tests/test_broken.py"]
    assert got["summary"] is None and got["rc"] == 124 and "time limit" in report.rc_note(got["rc"])


def test_rows_without_their_fields_are_skipped_and_counted_and_the_rest_reported(tmp_path):
    failed_after_timing = {"test": "benchmarks/test_bench_resized_crop.py::test_resized_crop[demo-reference]",
                           "table": "resized_crop", "outcome": "failed", "when": "call", "host_median_s": 0.01,
                           "error": "RuntimeError: boom", "extra_info": {}}
    over_budget = {"test": "benchmarks/test_bench_train_step.py::test_train_step[x-fastmae-compiled]",
                   "table": "train_step", "outcome": "skipped", "when": "setup", "extra_info": {},
                   "reason": "benchmark time budget: 200 s spent + ~70 s expected > 250 s (--bench-budget)"}
    no_shape = op_row("fastmae", "fwd")
    del no_shape["extra_info"]["shape"]
    no_rate = step_row("fastmae-eager", 900.0)
    del no_rate["extra_info"]["images_per_s"]
    rows = [op_row("reference", ms=4.0), op_row("reference-compiled", ms=2.0), op_row("fastmae", ms=0.5), no_shape,
            crop_row("reference", 2_000.0), crop_row("fastmae", 60_000.0), failed_after_timing,
            step_row("reference-eager", 800.0), no_rate, over_budget,
            {"test": "benchmarks/test_bench_data.py::test_data_throughput", "table": "data", "outcome": "passed",
             "extra_info": {"fastmae_ms": 2.2, "floor_ms": 1.74, "floor_over_fastmae": 0.79, "images": 8, "size": 224,
                            "table": "| path | CPU ms / image |"}},
            {"test": "benchmarks/test_bench_new.py::test_new", "table": "new", "outcome": "passed", "extra_info": {}}]
    write_run(tmp_path, rows, extra_lines=['{"test": "benchmarks/test_bench_train_step.py::test_tr'])  # cut by a kill
    rep, text = summary_of(tmp_path)

    b = rep["benchmarks"]
    assert (b["passed"], len(b["failed"]), b["cut_lines"]) == (10, 1, 1)
    assert b["failed"][0]["test"] == failed_after_timing["test"]
    assert list(b["skipped"].values()) == [[over_budget["test"]]]
    assert rep["tables"]["ops"] == {"rows": 4, "skipped": 1}
    assert rep["tables"]["train_step"] == {"rows": 2, "skipped": 1}
    assert rep["tables"]["resized_crop"] == {"rows": 2, "skipped": 0}
    assert b["other_tables"] == ["new"]

    assert "### GPU report" in text and "driver 570.1" in text and "bf16 GEMM 700 TFLOP/s" in text
    assert "Benchmarks: 10 passed, 1 failed, 1 skipped" in text and failed_after_timing["test"] in text
    assert "1 fused ops row(s) skipped" in text and "1 training step row(s) skipped" in text
    assert "| decoder_input | fwdbwd | 130.5 | 0.500 | 261 | 4 | 4.000 | 2.000 | 8.0x | 4.0x | 300 |" in text
    assert "Timing: CUDA events around the call, host queued ahead, L2 flushed before each call; median of 10" in text
    assert "| 256 | 375 x 500 | 224 x 224 | bfloat16 | 60,000 | 4.267 | 50 | 2,000 | 30.0x |" in text
    assert "| mae_vit_base_patch16 | reference-eager | 256 | 800.0 | 320.0 | 30.0% |" in text
    assert "fastmae 2.20 ms, decode-only floor 1.74 ms (floor / fastmae 0.79)" in text
    assert "1 line(s) of bench.jsonl cut off" in text and "Rows of no table here: new" in text


def test_a_table_that_cannot_be_built_leaves_the_others(tmp_path, monkeypatch):
    def broken(rows):
        raise ZeroDivisionError("a bug in one table")

    monkeypatch.setattr(report, "TABLES", tuple((n, t, broken if n == "ops" else f) for n, t, f in report.TABLES))
    write_run(tmp_path, [op_row("fastmae"), crop_row("fastmae", 50_000.0), step_row("fastmae-eager", 900.0)])
    rep, text = summary_of(tmp_path)
    assert "(fused ops table not built: ZeroDivisionError: a bug in one table)" in text
    assert "#### resized_crop" in text and "#### Training step" in text
    assert rep["tables"]["ops"]["error"] == "ZeroDivisionError: a bug in one table"


def test_the_step_table_follows_the_arms_and_fields_that_arrive():
    # Arms the table has never heard of, with a condition that differs between them (a column) and
    # one they share (said under the table); figures a row lacks are "-".
    rows = [step_row("loop-sync-per-step", 700.0, copy="compute stream", sync_per_step=True)["extra_info"],
            step_row("loop-overlapped", 750.0, copy="side stream", sync_per_step=False)["extra_info"],
            step_row("loop-foreach-adamw", 740.0, copy="side stream", sync_per_step=False, mfu=None,
                     optimizer="AdamW (foreach)")["extra_info"]]
    table = report.step_table(rows)
    header = table.lines[1]
    assert header == "| model | arm | batch | optimizer | copy | sync_per_step | images/s | step ms | MFU |"
    assert table.lines[3] == ("| mae_vit_base_patch16 | loop-sync-per-step | 256 | AdamW (fused) | compute stream "
                              "| True | 700.0 | 365.7 | 30.0% |")
    assert table.lines[5].endswith("| 740.0 | 345.9 | - |")
    assert table.lines[-1].startswith("\ndevice NVIDIA H100; torch 2.11.0; triton 3.6.0; amp bf16 autocast;")
    assert "optimizer" not in table.lines[-1] and table.skipped == 0


def test_the_summary_fits_what_the_gpu_machine_returns(tmp_path):
    # What comes back from the GPU machine is the last 12,000 characters of output.
    write_run(tmp_path, [op_row("fastmae")] + [
        {"test": f"benchmarks/test_bench_patchify.py::test_patchify[case-{i}]", "table": "ops", "outcome": "failed",
         "error": "RuntimeError: " + "x" * 200, "extra_info": {}} for i in range(300)])
    (tmp_path / "kernel_tests.log").write_text("".join(
        f"tests/test_patchify.py::test_patchify[{'y' * 100}-{i}] FAILED [ 1%]\n" for i in range(300)))
    rep, text = summary_of(tmp_path)
    assert len(rep["kernel_tests"]["failed"]) == 300 and len(rep["benchmarks"]["failed"]) == 300
    assert len(text) <= report.MAX_SUMMARY_CHARS + 100 and "and 280 more (in the results file)" in text


FAKE_KERNEL_TESTS = '''
def test_kernel_agrees():
    pass


def test_kernel_disagrees():
    assert 1 == 2
'''


# A pytest plugin the benchmark steps load (PYTEST_PLUGINS): every benchmark whose id contains INJECTED
# raises once its timing is done, before its test stores a figure.
FAIL_AFTER_TIMING = """
import pytest


@pytest.fixture(autouse=True)
def _fail_after_timing(request):
    if {injected!r} not in request.node.nodeid or "benchmark" not in request.fixturenames:
        return
    bench = request.getfixturevalue("benchmark")
    timed = bench.pedantic

    def pedantic(*args, **kwargs):
        timed(*args, **kwargs)
        raise RuntimeError("failure injected after the timing")

    bench.pedantic = pedantic
"""


@pytest.mark.slow
def test_the_report_delivers_on_the_cpu_with_a_failed_install_and_a_failing_benchmark(tmp_path):
    # The whole script, shortened: stand-in kernel tests (one fails), one per-op case of each pass
    # kind, the small resized_crop case and one training-step arm; the install fails and the first
    # per-op case fails once its timing is done. ~40 s on an idle 2-core machine; the deadline leaves
    # room for a busy one (each step's Python, torch and pytest start take ~4x longer at load 8).
    deadline = 150
    fake = tmp_path / "kernels" / "test_fake_kernels.py"
    fake.parent.mkdir()
    fake.write_text(FAKE_KERNEL_TESTS)
    out, results, work = tmp_path / "out", tmp_path / "results", tmp_path / "work"
    injected = "-fp32-fastmae-fwd]"
    (tmp_path / "fail_after_timing.py").write_text(FAIL_AFTER_TIMING.format(injected=injected))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "PYTHON": sys.executable, "OUT": str(out),
           "FASTMAE_REPORT_WORKDIR": str(work), "FASTMAE_REPORT_RESULTS_DIR": str(results),
           "FASTMAE_REPORT_DEADLINE_S": str(deadline), "FASTMAE_REPORT_INSTALL_CMD": "exit 3",
           "FASTMAE_REPORT_TESTS": str(fake),
           "FASTMAE_REPORT_BENCH_K": "(test_unpatchify and fp32-fastmae-fwd) or demo_64px or fastmae-eager",
           "PYTEST_PLUGINS": "fail_after_timing"}
    env.pop("TRITON_INTERPRET", None)
    start = time.monotonic()
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_report.sh")], env=env, capture_output=True,
                         text=True, timeout=deadline + 60)
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-3000:]
    assert elapsed <= deadline, f"{elapsed:.0f} s > the {deadline} s deadline"

    delivered = sorted(p.name for p in out.iterdir())
    assert len(delivered) == 3 and delivered[-1] == "logs.tar.gz", delivered
    result, summary = out / delivered[0], out / delivered[1]
    assert result.suffix == ".json" and summary.suffix == ".md" and (results / result.name).exists()
    with tarfile.open(out / "logs.tar.gz") as tar:
        archived = set(tar.getnames())
    assert {"./env.json", "./install.log", "./kernel_tests.log", "./bench.jsonl", "./steps.log"} <= archived
    assert run.stdout.rstrip().endswith(summary.read_text().rstrip())  # the summary is printed last

    assert "install failed (exit 3, install.log): fastmae imported from the source tree" in run.stderr
    rep = json.loads(result.read_text())
    assert rep["kind"] == "cpu" and rep["install"].startswith("install failed (exit 3")
    assert rep["kernel_tests"]["counts"] == {"passed": 1, "failed": 1}
    assert [t.rsplit("::", 1)[1] for t in rep["kernel_tests"]["failed"]] == ["test_kernel_disagrees"]
    failed = rep["benchmarks"]["failed"]
    assert len(failed) == 1 and failed[0]["test"].endswith(injected), failed
    assert "failure injected after the timing" in failed[0]["error"]
    assert "1 failed" in rep["summary_markdown"] and failed[0]["test"] in rep["summary_markdown"]
    # What ran to its end is in its table (a step cut on a slow machine says so instead).
    steps = rep["benchmark_steps"]
    if steps["ops"] == 0:
        assert "#### Fused ops: mae_vit_micro_patch4, batch 4, mask 0.75, fp32" in rep["summary_markdown"]
    if steps["data"] == 0:
        assert "#### resized_crop" in rep["summary_markdown"]
    if steps["train_step"] == 0:
        assert "| fastmae-eager |" in rep["summary_markdown"]
