"""Collect one ``gpu_report.sh`` run into ONE results file and print its markdown summary.

    python -m benchmarks.report --workdir DIR --out benchmarks/results

``DIR``: what the script left (``install.rc``, ``device.txt``, ``{tests,bytes_model,ops,e2e}.{rc,log}``,
``{ops,e2e}.json`` from pytest-benchmark). Missing pieces are reported missing, a JSON file cut off by a
kill is listed as corrupt. The file, ``<UTC time>-<gpu|cpu>-<device>.json``: environment (device,
driver, versions, git commit, date), test summaries, every benchmark figure (each result's
``extra_info``), skipped benchmarks with reasons, the summary. A CPU run is labelled: not speed claims.
"""

import argparse
import datetime as dt
import json
import re
import subprocess
from pathlib import Path


def _read(path: Path) -> str:
    """A file's text, empty when it does not exist."""
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _rc(path: Path) -> int | None:
    """An exit code the script recorded, None when missing (or ``skipped``)."""
    text = _read(path).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _run(*cmd: str) -> str | None:
    """A command's stdout, or None when it cannot run (no git, no driver tools)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _tests(workdir: Path, name: str) -> dict:
    """A pytest run: its exit code, last summary line and ``FAILED`` / ``ERROR`` lines (``-rfE``)."""
    log = _read(workdir / f"{name}.log").splitlines()
    summary = [ln.strip("= ") for ln in log if re.search(r"\d+ (passed|failed|error)", ln)]
    return {"rc": _rc(workdir / f"{name}.rc"), "summary": summary[-1] if summary else "not run",
            "failed": [ln for ln in log if ln.startswith(("FAILED", "ERROR"))]}


def _benchmarks(path: Path, corrupt: list[str]) -> list[dict]:
    """Each benchmark's ``extra_info`` (and its name); a file that is not valid JSON goes to ``corrupt``."""
    if not path.exists():
        return []
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as err:
        corrupt.append(f"{path.name}: {err}")
        return []
    return [{**b.get("extra_info", {}), "name": b.get("name")} for b in data.get("benchmarks", [])]


def _f(x, spec: str, suffix: str = "") -> str:
    """A table cell: ``x`` formatted with ``spec`` and ``suffix``, ``-`` for None."""
    return "-" if x is None else format(x, spec) + suffix


def ops_tables(rows: list[dict]) -> list[str]:
    """One table per (model, batch, mask, dtype): each op and pass, fastmae against the two references."""
    groups: dict = {}
    for r in rows:
        s = r["shape"]
        groups.setdefault((s["model"], s["N"], s["mask_ratio"], r["dtype"]), {}).setdefault(
            (r["variant"], r["mode"]), {})[r["provider"]] = r
    out = []
    for (model, n, ratio, dtype), cells in groups.items():  # in run order: the headline shape first
        out += [f"\n#### Fused ops: {model}, batch {n}, mask {ratio}, {dtype}\n",
                "| op | pass | MB (minimal) | fastmae ms | GB/s | % copy BW | reference ms | compiled ms "
                "| vs eager | vs compiled | peak MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for (variant, mode), by in cells.items():
            fast, ref, comp = by.get("fastmae") or {}, by.get("reference") or {}, by.get("reference-compiled") or {}
            ms = fast.get("median_ms")
            vs = [r["median_ms"] / ms if ms and r else None for r in (ref, comp)]
            out.append(f"| {variant} | {mode} | {(fast or ref or comp)['minimal_bytes'] / 1e6:.1f} | {_f(ms, '.3f')} "
                       f"| {_f(fast.get('effective_gbps'), '.0f')} | {_f(fast.get('pct_of_copy_bw'), '.0f')} "
                       f"| {_f(ref.get('median_ms'), '.3f')} | {_f(comp.get('median_ms'), '.3f')} "
                       f"| {_f(vs[0], '.1f', 'x')} | {_f(vs[1], '.1f', 'x')} | {_f(fast.get('peak_mem_mb'), '.0f')} |")
    if any(r["op"] == "encoder_input" for r in rows):
        out.append("\nencoder_input's references run the official encoder order (`encoder_input_official_ref`).")
    return out


def e2e_table(rows: list[dict]) -> list[str]:
    """The training-step arms: images/s, step time, MFU, peak memory, fused-op share, fast / reference."""
    if not rows:
        return []
    out = ["\n#### Training step (forward, backward, AdamW)\n",
           "| model | arm | batch | images/s | step ms | MFU | % of measured GEMM | peak GB | fused-op share "
           "| fast / ref | peak mem fast / ref |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mfu, share = r.get("mfu"), r.get("fused_ops_share")
        out.append(f"| {r['model']} | {r['arm']} | {r['batch']} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} "
                   f"| {_f(mfu and 100 * mfu, '.1f', '%')} | {_f(r.get('pct_of_measured_gemm'), '.1f')} "
                   f"| {_f(r.get('peak_mem_gb'), '.1f')} | {_f(share and 100 * share, '.1f', '%')} "
                   f"| {_f(r.get('speedup_vs_reference'), '.2f', 'x')} | {_f(r.get('peak_mem_vs_reference'), '.2f')} |")
    r, peak = rows[0], rows[0].get("peak_bf16_tflops_spec")
    mfu = f"MFU of the data-sheet bf16 peak, {peak:.0f} TFLOP/s" if peak else "no MFU (no known bf16 peak)"
    out.append(f"\n{r['device']}; torch {r['torch']}, triton {r['triton']}; {r['amp']}; mask {r['mask_ratio']}; "
               f"norm_pix_loss={r['norm_pix_loss']}; {r['attention']}; {r['optimizer']}; {mfu}.")
    return out


def build_report(workdir: Path) -> dict:
    """Everything one run produced, as the results file stores it (``summary_markdown`` added by ``main``)."""
    corrupt: list[str] = []
    ops, e2e = _benchmarks(workdir / "ops.json", corrupt), _benchmarks(workdir / "e2e.json", corrupt)
    first = (ops or e2e or [{}])[0]
    kind = "gpu" if _read(workdir / "device.txt").strip() == "cuda" else "cpu"
    env = {k: first.get(k) for k in ("device", "torch", "triton", "cuda", "python", "copy_gbps", "gemm_tflops",
                                      "sm", "gpu_mem_gib", "timer")}
    smi = _run("nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader") if kind == "gpu" else None
    if smi:
        name, env["driver"] = smi.splitlines()[0].split(", ")[:2]
        env["device"] = env["device"] or name
    skipped = [ln.strip() for log in ("ops.log", "e2e.log") for ln in _read(workdir / log).splitlines()
               if ln.startswith("SKIPPED")]
    return {
        "kind": kind, "label": "GPU report" if kind == "gpu" else "CPU report (not a speed claim)",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": {"commit": _run("git", "rev-parse", "HEAD"), "branch": _run("git", "rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(_run("git", "status", "--porcelain", "--untracked-files=no"))},
        "environment": env, "install": _read(workdir / "install.rc").strip() or None,
        "tests": _tests(workdir, "tests"), "bytes_model_tests": _tests(workdir, "bytes_model"),
        "corrupt_files": corrupt,
        "benchmark_exit_codes": {"ops": _rc(workdir / "ops.rc"), "train_step": _rc(workdir / "e2e.rc")},
        "ops": ops, "train_step": e2e, "skipped": skipped,
    }


def summary_markdown(report: dict) -> str:
    """The run's conditions, test summaries, the per-op tables and the training-step table."""
    env, git, t, b = report["environment"], report["git"], report["tests"], report["bytes_model_tests"]
    driver = f" (driver {env.get('driver', '?')})" if report["kind"] == "gpu" else ""
    lines = [f"### {report['label']}", "",
             f"{env.get('device')}{driver}, torch {env.get('torch')}, triton {env.get('triton')}, "
             f"CUDA {env.get('cuda')}, Python {env.get('python')}; commit {(git['commit'] or '?')[:10]}"
             f"{' (dirty)' if git['dirty'] else ''}, {report['date']}. Copy bandwidth measured in the same run: "
             f"{_f(env.get('copy_gbps'), '.0f')} GB/s; bf16 GEMM {_f(env.get('gemm_tflops'), '.0f')} TFLOP/s. "
             f"Timing: {env.get('timer') or '-'}.", "",
             f"Test suite: {t['summary']} (exit code {t['rc']}{'; cut at its time limit' * (t['rc'] == 124)}). "
             f"Bytes-model tests: {b['summary']} (exit code {b['rc']})."]
    if report["corrupt_files"]:
        lines.append("\nCorrupt benchmark JSON (cut off?), figures missing: " + "; ".join(report["corrupt_files"]))
    if report["kind"] == "cpu":
        lines.append("\nCPU run: these figures exercise the suite; they are not speed claims.")
    lines += ops_tables(report["ops"]) + e2e_table(report["train_step"])
    if report["skipped"]:
        lines.append("\nSkipped: " + "; ".join(report["skipped"]))
    return "\n".join(lines)


def main(argv=None) -> Path:
    """Write the results file, print the summary and the file's path."""
    ap = argparse.ArgumentParser(description="write one results file from a gpu_report.sh run")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    report = build_report(args.workdir)
    report["summary_markdown"] = summary_markdown(report)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", (report["environment"]["device"] or "unknown").replace("CPU: ", ""))
    stamp = report["date"].replace(":", "").replace("-", "")
    path = args.out / f"{stamp}-{report['kind']}-{slug.strip('-').lower()[:40]}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(report["summary_markdown"] + f"\n\nresults file: {path}")
    return path


if __name__ == "__main__":
    main()
