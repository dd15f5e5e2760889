"""Collect one report run into ONE results file and print its summary tables (markdown).

``benchmarks/gpu_report.sh`` calls this after the install, the test suite and the benchmarks::

    python -m benchmarks.report --workdir DIR --out benchmarks/results

``DIR`` holds what the script left: ``install.rc``, ``device.txt``, ``nvidia-smi.txt``, ``tests.rc``,
``tests.log``, ``tests.xml``, ``bytes_model.*`` (the bytes-model tests), ``ops.json`` and ``e2e.json``
(pytest-benchmark JSON), ``ops.log``, ``e2e.log``. Anything missing is reported as missing; a JSON
file cut off by a kill is recorded as corrupt and the results file is still written. The results file is
``benchmarks/results/<UTC date>-<device>.json``: the environment (GPU, driver, versions, git
commit, date), the test summary, every benchmark figure, and the markdown summary printed here.
A CPU run is labelled as such: its figures exercise the code, they are not speed claims.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

# The issue's targets (H100, bf16), shown next to the figures; nothing here asserts them.
TARGET_PCT_COPY = 80.0  # fwd+bwd, where the op moves >= 100 MB
TARGET_VS_EAGER = 8.0
TARGET_VS_COMPILED = 1.5
HEADLINE = {"model": "vit_b16", "N": 256, "mask_ratio": 0.75, "dtype": "bf16"}


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - no git, not a repository: report None
        return None


def _nvidia_smi() -> dict:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, check=True, timeout=20).stdout
    except Exception:  # noqa: BLE001 - no driver tools: report what torch knows
        return {}
    first = out.strip().splitlines()[0].split(", ") if out.strip() else []
    keys = ("gpu", "driver", "memory_total", "max_sm_clock", "power_limit")
    return dict(zip(keys, first))


def _tests(workdir: Path, name: str = "tests") -> dict:
    """Counts from the JUnit XML when present, else from pytest's last summary line."""
    res: dict = {"rc": _rc(workdir / f"{name}.rc")}
    xml = workdir / f"{name}.xml"
    if xml.exists():
        try:
            root = ET.parse(xml).getroot()
            suite = root if root.tag == "testsuite" else root.find("testsuite")
            res.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
            res["duration_s"] = float(suite.get("time", 0))
            res["failed"] = [
                f"{case.get('classname')}::{case.get('name')}"
                for case in suite.iter("testcase")
                if case.find("failure") is not None or case.find("error") is not None
            ]
        except (ET.ParseError, AttributeError):
            pass
    log = _read(workdir / f"{name}.log")
    if log:
        lines = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|error|skipped)", line)]
        last = log.strip().splitlines()[-1] if log.strip() else ""
        res["summary"] = lines[-1].strip("= ") if lines else last
        res["timed_out"] = "KeyboardInterrupt" in log or res.get("rc") in (124, 130, 137)
    return res


def _rc(path: Path) -> int | None:
    text = _read(path)
    return int(text.strip()) if text and text.strip().lstrip("-").isdigit() else None


def _benchmarks(path: Path, corrupt: list[str]) -> tuple[list[dict], dict]:
    """``extra_info`` of each benchmark (plus pytest-benchmark's own stats), and the file's header.

    A file that is not valid JSON (cut off by a kill) adds its name to ``corrupt`` and yields nothing.
    """
    if not path.exists():
        return [], {}
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as err:
        corrupt.append(f"{path.name}: {err}")
        return [], {}
    rows = []
    for b in data.get("benchmarks", []):
        row = dict(b.get("extra_info", {}))
        row["name"] = b.get("name")
        stats = b.get("stats") or {}
        row["host_clock_median_ms"] = stats.get("median", 0) * 1e3
        rows.append(row)
    header = {k: data.get(k) for k in ("machine_info", "commit_info", "datetime", "version")}
    return rows, header


def _skips(log: str | None) -> list[str]:
    """Benchmarks pytest skipped, with reasons (``-rs`` lines: ``SKIPPED [count] where: reason``)."""
    if not log:
        return []
    return [line.strip() for line in log.splitlines() if line.startswith("SKIPPED")]


def _skip_count(lines: list[str]) -> int:
    return sum(int(m.group(1)) if (m := re.match(r"SKIPPED \[(\d+)\]", line)) else 1 for line in lines)


# --------------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------------


def _fmt(x, spec: str = ".1f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _shape_key(r: dict) -> tuple:
    s = r["shape"]
    return (s["model"], s["N"], s["mask_ratio"], r["dtype"])


# Reference-only ops (``op_bench.REFERENCE_FOR``): the official order whose rows are the references
# of the fused op they name; the gather-first ``*_ref`` rows are kept in the results file.
REFERENCE_FOR = {"encoder_input_official": "encoder_input"}


def op_cells(rows: list[dict]) -> dict:
    """``{(variant, mode): {provider: row}}`` for one shape; a reference-only op's eager and compiled
    rows become the references of the op it stands for (the gather-first ones move to ``*-gather-first``)."""
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["variant"], r["mode"]), {})[r["provider"]] = r
    for (variant, mode), by in list(cells.items()):
        target = REFERENCE_FOR.get(variant)
        if target is None:
            continue
        del cells[variant, mode]
        into = cells.setdefault((target, mode), {})
        for provider, r in by.items():
            if provider in into:
                into[f"{provider}-gather-first"] = into[provider]
            into[provider] = r
    return cells


def ops_tables(rows: list[dict], with_targets: bool = True) -> list[str]:
    """One table per (model, batch, mask, dtype): each op and pass, fastmae vs the two references."""
    out = []
    groups: dict = {}
    for r in rows:
        groups.setdefault(_shape_key(r), []).append(r)
    order = sorted(groups, key=lambda k: (k != tuple(HEADLINE.values()), k))
    passes = ("fwd", "bwd", "fwdbwd")
    for key in order:
        model, n, ratio, dtype = key
        out.append(f"\n#### Fused ops: {model}, batch {n}, mask {ratio}, {dtype}\n")
        out.append("| op | pass | MB (minimal) | fastmae ms | GB/s | % copy BW | reference ms | compiled ms "
                   "| vs eager | vs compiled | peak MB | targets |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        cells = op_cells(groups[key])
        for (variant, mode), by in sorted(cells.items(), key=lambda kv: (kv[0][0], passes.index(kv[0][1]))):
            fast, ref, comp = by.get("fastmae"), by.get("reference"), by.get("reference-compiled")
            any_row = fast or ref or comp
            mb = any_row["minimal_bytes"] / 1e6
            vs_eager = ref["median_ms"] / fast["median_ms"] if fast and ref else None
            vs_comp = comp["median_ms"] / fast["median_ms"] if fast and comp else None
            targets = ""
            if with_targets and fast and mode == "fwdbwd" and variant.split("[")[0] != "masking_ids":
                checks = []
                if mb >= 100:
                    checks.append(("copy", fast["pct_of_copy_bw"] >= TARGET_PCT_COPY))
                if vs_eager is not None:
                    checks.append(("eager", vs_eager >= TARGET_VS_EAGER))
                if vs_comp is not None:
                    checks.append(("compiled", vs_comp >= TARGET_VS_COMPILED))
                targets = " ".join(f"{name} {'met' if ok else 'missed'}" for name, ok in checks)
            official = " (ref: official order)" if ref and ref["op"] in REFERENCE_FOR else ""
            out.append(
                f"| {variant}{official} | {mode} | {mb:.1f} | {_fmt(fast and fast['median_ms'], '.3f')} "
                f"| {_fmt(fast and fast['effective_gbps'], '.0f')} "
                f"| {_fmt(fast and fast['pct_of_copy_bw'], '.0f')} "
                f"| {_fmt(ref and ref['median_ms'], '.3f')} | {_fmt(comp and comp['median_ms'], '.3f')} "
                f"| {_fmt(vs_eager, '.1f')}{'x' if vs_eager else ''} "
                f"| {_fmt(vs_comp, '.1f')}{'x' if vs_comp else ''} "
                f"| {_fmt(fast and fast['peak_mem_mb'], '.0f')} | {targets} |"
            )
    if any(r["op"] in REFERENCE_FOR for r in rows):
        out.append("\nencoder_input's references are the official encoder order (positions added to all L "
                   "patches, then gather, then cls: `encoder_input_official`), what the fast path replaces "
                   "in the model; the gather-first `encoder_input_ref` rows are in the results file.")
    return out


def e2e_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = ["\n#### Training step (forward, backward, AdamW)\n",
           "| model | arm | batch | images/s | step ms | MFU | % of measured GEMM | peak GB | fused-op share "
           "| fast / ref | peak mem fast / ref |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['arm']} | {r['batch']} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} "
            f"| {_fmt(r.get('mfu') and 100 * r['mfu'], '.1f')}{'%' if r.get('mfu') else ''} "
            f"| {_fmt(r.get('pct_of_measured_gemm'), '.1f')} | {_fmt(r.get('peak_mem_gb'), '.1f')} "
            f"| {_fmt(r.get('fused_ops_share') and 100 * r['fused_ops_share'], '.1f')}"
            f"{'%' if r.get('fused_ops_share') else ''} "
            f"| {_fmt(r.get('speedup_vs_reference'), '.2f')}{'x' if r.get('speedup_vs_reference') else ''} "
            f"| {_fmt(r.get('peak_mem_vs_reference'), '.2f')} |"
        )
    first = rows[0]
    mfu = (f"MFU against the data-sheet bf16 peak ({first['peak_bf16_tflops_spec']:.0f} TFLOP/s), FLOPs per "
           "benchmarks/flops.py" if first.get("peak_bf16_tflops_spec")
           else "no MFU (no known peak for this device)")
    out.append(f"\n{first['amp']}; mask {first['mask_ratio']}; norm_pix_loss={first['norm_pix_loss']}; "
               f"attention {first['attention']}; optimizer {first['optimizer']}; {mfu}.")
    return out


def conditions(report: dict) -> str:
    env, git = report["environment"], report["git"]
    device = env.get("device")
    if report["kind"] != "cpu":
        device = f"{device} (driver {env.get('driver', '?')})"
    cuda = f", CUDA {env.get('cuda')}" if env.get("cuda") else ""
    gemm = f"; bf16 GEMM {_fmt(env.get('gemm_tflops'), '.0f')} TFLOP/s" if env.get("gemm_tflops") else ""
    return (f"{report['label']}: {device}, torch {env.get('torch')}, "
            f"triton {env.get('triton')}{cuda}, Python {env.get('python')}; commit "
            f"{(git.get('commit') or '?')[:10]}{' (dirty)' if git.get('dirty') else ''}, {report['date']}. "
            f"Copy bandwidth measured in the same run: {_fmt(env.get('copy_gbps'), '.0f')} GB/s"
            f"{gemm}. "
            f"Timing: {env.get('timer', '-')}.")


def summary_markdown(report: dict) -> str:
    t = report["tests"]
    lines = [f"### {report['label']}", "", conditions(report), "",
             f"Test suite: {t.get('summary', 'not run')} (exit code {t.get('rc')}).",
             f"Bytes-model tests (benchmarks/test_bytes_model.py): "
             f"{report['bytes_model_tests'].get('summary', 'not run')} "
             f"(exit code {report['bytes_model_tests'].get('rc')})."]
    if report["corrupt_files"]:
        lines.append("\nCorrupt benchmark JSON (cut off?), its figures are missing: "
                     + "; ".join(report["corrupt_files"]))
    if report["kind"] == "cpu":
        lines.append("\nCPU run: these figures exercise the suite; they are not speed claims.")
    lines += ops_tables(report["ops"], with_targets=report["kind"] == "gpu")
    lines += e2e_table(report["train_step"])
    if report["skipped"]:
        lines.append(f"\n{_skip_count(report['skipped'])} benchmarks skipped: "
                     + "; ".join(report["skipped"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def _run_was_on_gpu(workdir: Path, first: dict) -> bool:
    """GPU or CPU run: from a benchmark result, else from what the script recorded, else from torch."""
    if first.get("device_type"):
        return first["device_type"] == "cuda"
    device = _read(workdir / "device.txt")
    if device and device.strip():
        return device.strip() == "cuda"
    smi = _read(workdir / "nvidia-smi.txt")
    if smi and "NVIDIA-SMI" in smi:
        return True
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def build_report(workdir: Path) -> dict:
    corrupt: list[str] = []
    ops, ops_header = _benchmarks(workdir / "ops.json", corrupt)
    e2e, e2e_header = _benchmarks(workdir / "e2e.json", corrupt)
    first = (ops or e2e or [{}])[0]
    kind = "gpu" if _run_was_on_gpu(workdir, first) else "cpu"
    env = {k: first.get(k) for k in ("device", "device_type", "torch", "triton", "cuda", "python",
                                      "copy_gbps",
                                      "gemm_tflops", "sm", "gpu_mem_gib", "l2_mib", "timer")}
    smi = _nvidia_smi() if kind == "gpu" else {}
    env.update({k: v for k, v in smi.items() if k != "gpu"})
    if not env.get("device") and smi.get("gpu"):
        env["device"] = smi["gpu"]  # no benchmark result to name the device
    header = ops_header or e2e_header
    return {
        "kind": kind,
        "label": "GPU report" if kind == "gpu" else "CPU report (not a speed claim)",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": {"commit": _git("rev-parse", "HEAD"), "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))},
        "environment": env,
        "machine_info": header.get("machine_info"),
        "install": {"rc": _rc(workdir / "install.rc"),
                    "skipped": (_read(workdir / "install.rc") or "").strip() == "skipped"},
        "tests": _tests(workdir),
        "bytes_model_tests": _tests(workdir, "bytes_model"),
        "corrupt_files": corrupt,
        "benchmark_exit_codes": {"ops": _rc(workdir / "ops.rc"), "train_step": _rc(workdir / "e2e.rc")},
        "ops": ops,
        "train_step": e2e,
        "skipped": _skips(_read(workdir / "ops.log")) + _skips(_read(workdir / "e2e.log")),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "unknown"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description="write one results file from a gpu_report.sh run")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    report = build_report(args.workdir)
    report["summary_markdown"] = summary_markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    device = report["environment"].get("device") or "unknown"
    stamp = report["date"].replace(":", "").replace("-", "")
    path = args.out / f"{stamp}-{report['kind']}-{_slug(device.replace('CPU: ', ''))}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(report["summary_markdown"])
    print(f"\nresults file: {path}")
    return path


if __name__ == "__main__":
    main()
