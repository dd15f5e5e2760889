"""One ``gpu_report.sh`` run as ONE results file and its markdown summary, ``python3 -m benchmarks.report
--workdir DIR --out benchmarks/results`` (what DIR holds, and why nothing a run leaves makes the report
fail: ``benchmarks/NOTES.md``, "The GPU report").
"""

import argparse
import datetime as dt
import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import NamedTuple

BENCH_STEPS = ("ops", "data", "train_step")  # the script's benchmark steps, in run order
MAX_SUMMARY_CHARS = 10_000  # the GPU machine returns the last 12,000 characters of output
MAX_LISTED = 20  # failing test ids or benchmarks named in the summary (all are in the results file)
# pytest's verbose lines, "tests/x.py::t[a b] SKIPPED (why) [ 5%]" and with xdist "[gw1] [ 5%] FAILED
# tests/x.py::t[a b]", and -rfE's "FAILED tests/x.py::t[a b] - message": an id may hold spaces (and " - ");
# anchored, so a captured log line that says ERROR is not a test.
_STATUSES = "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS"
_ID_FIRST = re.compile(rf"^(\S+\.py(?:::.*?)?) ({_STATUSES})(?: \(.*\))?(?: +\[\s*\d+%\])?$")
_XDIST = re.compile(rf"^\[gw\d+\] \[\s*\d+%\] ({_STATUSES}) (\S+\.py(?:::.*)?)$")
_SHORT = re.compile(rf"^({_STATUSES}) (\S+\.py(?:::.*?)?)(?: - .*)?$")
_SUMMARY = re.compile(r"(\d+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed)|no tests ran)\b.* in [\d.]+s")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _rc(path: Path) -> int | None:
    text = _read(path).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(("git", *args), capture_output=True, text=True, check=True, timeout=3).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _f(x, fmt: str, scale: float = 1, per: float = 1) -> str:
    """A table cell: ``fmt.format(x * scale / per)``, ``-`` when ``x`` is no number (None, a bool, a text)."""
    return fmt.format(x * scale / per) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def rc_note(rc: int | None) -> str:
    """An exit code as the summary says it (``timeout`` gives 124 at the time limit, 137 for a kill)."""
    notes = {None: "not run", 124: "cut at its time limit (exit 124)", 137: "killed at its time limit (exit 137)"}
    return notes.get(rc, f"exit {rc}")


def pytest_log(workdir: Path, name: str) -> dict:
    """A pytest step from its verbose log: exit code, pytest's last summary line (None when the run was
    cut), the counts of each test id's last status and the failing ids."""
    log = _read(workdir / f"{name}.log")
    status: dict[str, str] = {}
    for line in map(str.rstrip, log.splitlines()):  # xdist ends its lines with a space
        if found := _ID_FIRST.match(line):
            status[found.group(1)] = found.group(2)
        elif found := _XDIST.match(line):
            status[found.group(2)] = found.group(1)
        elif found := _SHORT.match(line):  # the longest id seen that the line starts with, else up to " - "
            seen = [t for t in status if line.startswith(f"{found.group(1)} {t}")]
            status[max(seen, key=len, default=found.group(2))] = found.group(1)
    counts = dict(Counter(s.lower() for s in status.values()))
    summaries = [ln.strip("= ") for ln in log.splitlines() if _SUMMARY.search(ln)]
    return {"rc": _rc(workdir / f"{name}.rc"), "ran": bool(log), "summary": summaries[-1] if summaries else None,
            "counts": counts, "failed": [t for t, s in status.items() if s in ("FAILED", "ERROR")]}


def _json(text: str):
    """``text`` parsed as JSON, or the error that says why it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return err


Table = NamedTuple("Table", [("lines", list[str]), ("skipped", int)])  # markdown; rows lacking a field it needs


def _complete(rows: list[dict], fields: tuple[str, ...]) -> tuple[list[dict], int]:
    """The rows that have every one of ``fields`` (``a.b`` reads into a nested dict), and how many did not."""
    def get(row, field):
        for key in field.split("."):
            row = row.get(key) if isinstance(row, dict) else None
        return row

    kept = [r for r in rows if all(get(r, f) is not None for f in fields)]
    return kept, len(rows) - len(kept)


def _markdown(title: str, header: list[str], lines: list[list[str]], text_columns: int) -> list[str]:
    """A titled markdown table, its first ``text_columns`` columns left-aligned, the others right-aligned."""
    return [f"\n#### {title}\n", "| " + " | ".join(header) + " |",
            "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns),
            *("| " + " | ".join(cells) + " |" for cells in lines)]


def _pivot(rows: list[dict], title, keys: list[str], key, columns: tuple) -> list[str]:
    """Per ``title(row)``, in run order, a table of one line per ``key(row)`` (text cells headed ``keys``)
    and a column per ``(header, provider, field, format[, scale, per])``: that provider's row's field, any
    provider's for None, for a pair (a, b) a's field over b's."""
    tables: dict = {}
    for r in rows:
        tables.setdefault(title(r), {}).setdefault(key(r), {})[r["provider"]] = r

    def cell(by, provider, field, *fmt):
        if isinstance(provider, tuple):
            a, b = (by.get(p, {}).get(field) for p in provider)
            return _f(a / b if a and b else None, *fmt)
        return _f((by.get(provider, {}) if provider else next(iter(by.values()))).get(field), *fmt)

    out = []
    for name, lines in tables.items():
        cells = [[*k, *(cell(by, *c[1:]) for c in columns)] for k, by in lines.items()]
        out += _markdown(name, keys + [c[0] for c in columns], cells, len(keys))
    return out


OPS_FIELDS = ("op", "variant", "provider", "mode", "dtype", "shape.model", "shape.N", "shape.mask_ratio",
              "median_ms", "minimal_bytes")
OPS_COLUMNS = (("MB (minimal)", None, "minimal_bytes", "{:.1f}", 1, 1e6),
               ("fastmae ms", "fastmae", "median_ms", "{:.3f}"), ("GB/s", "fastmae", "effective_gbps", "{:.0f}"),
               ("% copy BW", "fastmae", "pct_of_copy_bw", "{:.0f}"),
               ("reference ms", "reference", "median_ms", "{:.3f}"),
               ("compiled ms", "reference-compiled", "median_ms", "{:.3f}"),
               ("vs eager", ("reference", "fastmae"), "median_ms", "{:.1f}x"),
               ("vs compiled", ("reference-compiled", "fastmae"), "median_ms", "{:.1f}x"),
               ("peak MB", "fastmae", "peak_mem_mb", "{:.0f}"))


def ops_tables(rows: list[dict]) -> Table:
    """One table per (model, batch, mask, dtype), headline first: each op and pass, fastmae against the
    eager and the compiled reference."""
    rows, skipped = _complete(rows, OPS_FIELDS)
    shape = "Fused ops: {model}, batch {N}, mask {mask_ratio}, ".format
    out = _pivot(rows, lambda r: shape(**r["shape"]) + r["dtype"], ["op", "pass"], lambda r: (r["variant"], r["mode"]),
                 OPS_COLUMNS)
    if rows:
        out.append(f"\nTiming: {rows[0].get('timer') or '-'}; median of {rows[0].get('rounds') or '?'} rounds.")
    if any(r["op"] == "encoder_input" for r in rows):
        out.append("\nencoder_input's references run the official encoder order (`encoder_input_official_ref`).")
    return Table(out, skipped)


CROP_FIELDS = ("provider", "images", "image_hw", "out_side", "dtype", "median_ms", "images_per_s")
CROP_COLUMNS = (("fastmae images/s", "fastmae", "images_per_s", "{:,.0f}"),
                ("fastmae ms", "fastmae", "median_ms", "{:.3f}"), ("GB/s", "fastmae", "effective_gbps", "{:.0f}"),
                ("reference images/s", "reference", "images_per_s", "{:,.0f}"),
                ("fastmae / reference", ("fastmae", "reference"), "images_per_s", "{:.1f}x"))


def resized_crop_table(rows: list[dict]) -> Table:
    """images/s of ``resized_crop`` per case: fastmae's op against the per-image reference loop."""
    rows, skipped = _complete(rows, CROP_FIELDS)
    title = "resized_crop (crop, antialiased bicubic resize, flip, normalise: one launch per batch)"
    out = _pivot(rows, lambda r: title, ["images", "source H x W", "output", "dtype"],
                 lambda r: (str(r["images"]), "{} x {}".format(*r["image_hw"]), "{0} x {0}".format(r["out_side"]),
                            r["dtype"]), CROP_COLUMNS)
    if rows:
        out.append(f"\n{rows[0].get('device', '?')}; torch {rows[0].get('torch', '?')}; RandomResizedCrop boxes "
                   "(scale 0.2-1), half flipped; time per batch on the benchmark's clock.")
    return Table(out, skipped)


def data_table(rows: list[dict]) -> Table:
    """The data pipeline's CPU cost per image (its whole table is in the row, in the results file)."""
    rows, skipped = _complete(rows, ("fastmae_ms", "floor_ms"))
    out = []
    for r in rows:
        out += [f"\n#### Data pipeline, CPU cost per image ({r.get('images', '?')} images, {r.get('size', '?')} px)\n",
                f"fastmae {r['fastmae_ms']:.2f} ms, decode-only floor {r['floor_ms']:.2f} ms "
                f"(floor / fastmae {_f(r.get('floor_over_fastmae'), '{:.2f}')})"]
    return Table(out, skipped)


# The training-step figures, a column when any row has them: (header, field, format[, scale]).
STEP_FIGURES = (("images/s", "images_per_s", "{:.1f}"), ("step ms", "step_ms", "{:.1f}"),
                ("MFU", "mfu", "{:.1f}%", 100), ("% of measured GEMM", "pct_of_measured_gemm", "{:.1f}"),
                ("peak GB", "peak_mem_gb", "{:.1f}"), ("fused-op share", "fused_ops_share", "{:.1f}%", 100),
                ("fast / ref", "speedup_vs_reference", "{:.2f}x"),
                ("peak mem fast / ref", "peak_mem_vs_reference", "{:.2f}"))
# Conditions every row states; one value for all rows goes under the table, values that differ become columns.
STEP_CONDITIONS = ("device", "torch", "triton", "amp", "mask_ratio", "norm_pix_loss", "attention", "optimizer")
# Text fields that are no condition worth a column (bookkeeping, or said by the arm's name).
STEP_BOOKKEEPING = {"model", "arm", "test", "table", "outcome", "when", "timer", "backend", "compiled", "device_type",
                    "cuda", "python", "fastmae_backend", "scope", "sm"}


def step_table(rows: list[dict]) -> Table:
    """Every training-step row, in run order, whatever its arm: each figure any row has is a column; a
    condition (a text or true/false field) that differs between rows is a column, one all rows share is
    said once under the table."""
    rows, skipped = _complete(rows, ("arm", "images_per_s"))
    if not rows:
        return Table([], skipped)
    figures = [c for c in STEP_FIGURES if any(isinstance(r.get(c[1]), (int, float)) for r in rows)]
    conditions = list(STEP_CONDITIONS) + sorted({k for r in rows for k, v in r.items() if isinstance(v, (str, bool))
                                                 and k not in STEP_BOOKKEEPING and k not in STEP_CONDITIONS})
    varying = [k for k in conditions if len({json.dumps(r.get(k), default=str) for r in rows}) > 1]
    shared = [k for k in conditions if k not in varying and rows[0].get(k) is not None]
    keys = [k for k in ("model", "arm", "batch") if any(k in r for r in rows)] + varying
    lines = [["-" if r.get(k) is None else str(r[k]) for k in keys] + [_f(r.get(c[1]), *c[2:]) for c in figures]
             for r in rows]
    peak = next((r["peak_bf16_tflops_spec"] for r in rows if r.get("peak_bf16_tflops_spec")), None)
    mfu = f"MFU of the data-sheet bf16 peak, {peak:.0f} TFLOP/s" if peak else "no MFU (no known bf16 peak)"
    out = _markdown("Training step (forward, backward, optimizer)", keys + [c[0] for c in figures], lines, len(keys))
    out.append("\n" + "; ".join([f"{k} {rows[0][k]}" for k in shared] + [mfu]) + ".")
    return Table(out, skipped)


# Each table of the summary, in its order: the JSONL rows' ``table``, its title and its builder.
TABLES = (("ops", "fused ops", ops_tables), ("resized_crop", "resized_crop", resized_crop_table),
          ("train_step", "training step", step_table), ("data", "data pipeline", data_table))


def build_tables(rows: list[dict]) -> tuple[list[str], dict]:
    """Every table from the rows of the benchmarks that passed, each on its own: its lines, and per
    table the rows skipped for missing fields (``error`` where the table could not be built)."""
    lines, notes = [], {}
    for name, title, build in TABLES:
        mine = [{**r.get("extra_info", {}), "test": r.get("test")} for r in rows
                if r.get("table") == name and r.get("outcome") == "passed"]
        notes[name] = {"rows": len(mine)}
        try:
            table = build(mine)
        except Exception as err:  # noqa: BLE001 - one table's bug must not cost the others
            notes[name]["error"] = f"{type(err).__name__}: {err}"
            table = Table([f"\n({title} table not built: {notes[name]['error']})"], len(mine))
        notes[name]["skipped"] = table.skipped
        lines += table.lines
        if table.skipped:
            lines.append(f"\n{table.skipped} {title} row(s) skipped: a field the table needs is missing.")
    return lines, notes


def build_report(workdir: Path) -> dict:
    """Everything one run produced, as the results file stores it (``summary_markdown`` added by ``main``)."""
    env = _json(_read(workdir / "env.json") or "{}")
    env = env if isinstance(env, dict) else {"error": f"env.json: {env}"}
    kind = "gpu" if env.get("device_type") == "cuda" else "cpu"
    lines = [_json(line) for line in _read(workdir / "bench.jsonl").splitlines() if line.strip()]
    rows = [r for r in lines if isinstance(r, dict)]  # the others were cut off by a kill
    skipped: dict[str, list[str]] = {}  # by reason, the budget's figures left out
    for r in rows:
        if r.get("outcome") == "skipped":
            reason = re.sub(r"\d+ s spent \+ ~\d+ s expected > \d+ s", "…", str(r.get("reason")))
            skipped.setdefault(reason, []).append(r.get("test"))
    known = {None, *(t[0] for t in TABLES)}
    return {
        "kind": kind, "label": "GPU report" if kind == "gpu" else "CPU report (not a speed claim)",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": {"commit": _git("rev-parse", "HEAD"), "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))},
        "environment": env, "install": _read(workdir / "install.txt").strip() or None,
        "kernel_tests": pytest_log(workdir, "kernel_tests"),
        "benchmark_steps": {name: _rc(workdir / f"{name}.rc") for name in BENCH_STEPS},
        "benchmarks": {"rows": rows, "cut_lines": len(lines) - len(rows),
                       "passed": sum(r.get("outcome") == "passed" for r in rows),
                       "failed": [{"test": r.get("test"), "error": r.get("error")} for r in rows
                                  if r.get("outcome") == "failed"], "skipped": skipped,
                       "other_tables": sorted({str(r.get("table")) for r in rows if r.get("table") not in known})},
        "tables": build_tables(rows)[1],
    }


def _listed(items: list[str]) -> str:
    """At most ``MAX_LISTED`` items, then how many more."""
    more = len(items) - MAX_LISTED
    return "; ".join(items[:MAX_LISTED]) + (f"; and {more} more (in the results file)" if more > 0 else "")


def summary_markdown(report: dict) -> str:
    """The run's conditions, the failing test ids, the benchmark counts and every table."""
    env, git, t, b = report["environment"], report["git"], report["kernel_tests"], report["benchmarks"]
    gemm = f"; bf16 GEMM {_f(env.get('gemm_tflops'), '{:.0f}')} TFLOP/s" if report["kind"] == "gpu" else ""
    lines = [f"### {report['label']}", "",
             f"{env.get('device', 'environment not measured')} (driver {env.get('driver') or '-'}), "
             f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
             f"Python {env.get('python')}; "
             f"commit {(git['commit'] or '?')[:10]}{' (dirty)' if git['dirty'] else ''}, {report['date']}. "
             f"Copy bandwidth measured in the same run: {_f(env.get('copy_gbps'), '{:.0f}')} GB/s{gemm}.", "",
             f"Install: {report['install'] or 'no record'}"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(t["counts"].items())) or "none ran"
    pytest_says = f"; pytest: {t['summary']}" if t["summary"] else "; no pytest summary line" if t["ran"] else ""
    lines.append(f"\nKernel tests: {counts} ({rc_note(t['rc'])}){pytest_says}.")
    if t["failed"]:
        lines.append(f"Failing tests ({len(t['failed'])}): {_listed(t['failed'])}")
    skipped = b["skipped"]
    lines.append(f"\nBenchmarks: {b['passed']} passed, {len(b['failed'])} failed, "
                 f"{sum(map(len, skipped.values()))} skipped; steps: "
                 + ", ".join(f"{k} {rc_note(v)}" for k, v in report["benchmark_steps"].items()) + ".")
    if b["failed"]:
        lines.append("Failed benchmarks: " + _listed([f"{x['test']} ({str(x['error'])[:100]})" for x in b["failed"]]))
    lines += [f"Skipped ({len(tests)}): {reason}" for reason, tests in skipped.items()]
    if b["cut_lines"]:
        lines.append(f"{b['cut_lines']} line(s) of bench.jsonl cut off (a benchmark killed while writing).")
    if b["other_tables"]:
        lines.append(f"Rows of no table here: {', '.join(b['other_tables'])} (in the results file).")
    if report["kind"] == "cpu":
        lines.append("\nCPU run: these figures exercise the suite; they are not speed claims.")
    text = "\n".join(lines + build_tables(b["rows"])[0])
    if len(text) > MAX_SUMMARY_CHARS:
        text = text[:MAX_SUMMARY_CHARS] + "\n\n(summary cut here: the whole is in the results file)"
    return text


def main(argv=None) -> Path:
    """Write the results file and the summary; print the summary and the file's path."""
    ap = argparse.ArgumentParser(description="write one results file from a gpu_report.sh run")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    report = build_report(args.workdir)
    report["summary_markdown"] = summary_markdown(report)
    device = str(report["environment"].get("device") or "unknown").replace("CPU: ", "")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()[:40]
    path = args.out / f"{report['date'].replace(':', '').replace('-', '')}-{report['kind']}-{slug}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(report["summary_markdown"] + "\n", encoding="utf-8")
    print(report["summary_markdown"] + f"\n\nresults file: {path}")
    return path


if __name__ == "__main__":
    main()
