"""Resource table for every fused kernel, compiled for real GPUs on any machine (no GPU needed).

    python -m tools.kernel_resources [--arch 90 80] [--module NAME ...] [--json]

Every module in ``fastmae.kernel_modules.KERNEL_MODULES`` has its kernels at ViT-B/16 shapes listed by
``tools.kernel_specs.<module>.compile_specs()``. Each spec is compiled with ``triton.compile`` for
``sm_<arch>`` with the specialisation the JIT gives aligned tensors (pointer and int arguments named
in ``"aligned"`` marked divisible by 16), then read back from the cubin with the CUDA tools that ship
in the triton wheel (``triton/backends/nvidia/bin``, run and parsed by ``tools/sass.py``):

- ``cuobjdump -res-usage``: registers per thread, stack, local memory (per thread), static shared;
- ``ptxas -v`` on the kernel's PTX: spill stores / loads in bytes;
- ``cuobjdump -sass``: every global load / store opcode counted (``LDG.E.128`` moves 16 bytes a
  thread, ``LDG.E.64`` 8, ``LDG.E`` 4, ``LDG.E.U16`` 2; ``LDGSTS`` are async copies to shared memory),
  local-memory traffic (``LDL``/``STL``) and global atomics.

Shared memory in the table is the total the launch needs (Triton's metadata: static plus the
scratch its layout conversions and reductions use). ``--json`` prints one JSON record per
(kernel, arch) instead of the table; ``tests/test_gpu_readiness.py`` reads that.

The kernels must be compiled, not interpreted: ``TRITON_INTERPRET`` is removed from the environment
before anything imports them.
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # before triton or the kernels are imported: compile for real

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402

from .sass import disassemble, memory_accesses, ptxas_spills, res_usage  # noqa: E402
from .throughput import launch_figures, summary_line  # noqa: E402


def _jit_function(kernel):
    """The JITFunction under ``@triton.autotune`` / ``@triton.heuristics`` wrappers."""
    while not isinstance(kernel, triton.runtime.JITFunction) and hasattr(kernel, "fn"):
        kernel = kernel.fn
    if not isinstance(kernel, triton.runtime.JITFunction):
        raise TypeError(f"spec kernel is a {type(kernel).__name__}, not a triton JITFunction "
                        "(was TRITON_INTERPRET set when it was decorated?)")
    return kernel


def compile_spec(spec: dict, arch: int):
    """``triton.compile`` of one spec for ``sm_<arch>``, aligned arguments marked divisible by 16."""
    fn = _jit_function(spec["kernel"])
    constexprs = dict(spec.get("constexprs", {}))
    missing = [a for a in fn.arg_names if a not in spec["signature"] and a not in constexprs]
    if missing:
        raise ValueError(f"spec signature does not name the kernel arguments {missing}")
    signature = {a: "constexpr" if a in constexprs else spec["signature"][a] for a in fn.arg_names}
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    # how the JIT spells "divisible by 16": [["tt.divisibility", 16]] in Triton 3.3 .. 3.9
    divisible = backend.parse_attr("D") if hasattr(backend, "parse_attr") else [["tt.divisibility", 16]]
    attrs = {}
    for name in spec.get("aligned", []):
        if name not in fn.arg_names or name in constexprs:
            raise ValueError(f"aligned argument {name!r} is not a runtime argument of {fn.__name__}")
        attrs[(fn.arg_names.index(name),)] = divisible
    options = {"num_warps": spec.get("num_warps", 4)}
    if "num_stages" in spec:
        options["num_stages"] = spec["num_stages"]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=target, options=options)


def inspect_cubin(compiled, arch: int, workdir: str, stem: str) -> tuple[dict, str]:
    """Registers, stack, local and shared memory, spills and the SASS global-memory opcodes; and the SASS."""
    cubin = os.path.join(workdir, f"{stem}.cubin")
    ptx = os.path.join(workdir, f"{stem}.ptx")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    with open(ptx, "w") as f:
        f.write(compiled.asm["ptx"])
    res = res_usage(cubin)
    spill_stores, spill_loads = ptxas_spills(arch, ptx, cubin + ".v")
    sass = disassemble(cubin)
    return {
        "registers": res["registers"],
        "stack": res["stack"],
        "local": res["local"],
        "shared": max(res["shared"], int(getattr(compiled.metadata, "shared", 0) or 0)),
        "spill_stores": spill_stores,
        "spill_loads": spill_loads,
        **memory_accesses(sass),  # local_ops, atomics, loads, stores, wide_accesses
    }, sass


def collect(archs, modules=None) -> list[dict]:
    """One record per (kernel spec, arch) of ``modules`` (default: every kernel module); a module that
    is missing or broken gives an error record.

    Compiles run one after another (Triton caches them between runs); the CUDA tools then run in
    parallel threads, since they are separate processes.
    """
    from fastmae.kernel_modules import KERNEL_MODULES

    from .kernel_specs import compile_specs as specs_of

    records, jobs = [], []
    for module in modules or KERNEL_MODULES:
        try:
            specs = specs_of(module)
        except Exception as e:  # a module not written yet, or without compile_specs
            records.append({"module": module, "name": None, "arch": None, "ok": False,
                            "error": f"{type(e).__name__}: {e}"})
            continue
        for spec in specs:
            for arch in archs:
                rec = {"module": module, "name": spec["name"], "arch": arch,
                       "num_warps": spec.get("num_warps", 4),
                       "expect_vector_io": bool(spec.get("expect_vector_io", False)),
                       "why_not_vector": spec.get("why_not_vector", "")}
                records.append(rec)
                try:
                    jobs.append((rec, spec, compile_spec(spec, arch)))
                except Exception as e:
                    rec.update(ok=False, error=f"{type(e).__name__}: {e}",
                               traceback=traceback.format_exc(limit=4))

    with tempfile.TemporaryDirectory(prefix="fastmae-sass-") as workdir:
        def inspect(job):
            rec, spec, compiled = job
            try:
                resources, sass = inspect_cubin(compiled, rec["arch"], workdir, f"{len(records)}_{id(rec)}")
                rec.update(resources, ok=True)
                rec.update(launch_figures(rec, spec, sass))
            except Exception as e:
                rec.update(ok=False, error=f"{type(e).__name__}: {e}",
                           traceback=traceback.format_exc(limit=4))

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(inspect, jobs))
    return records


def _short(opcodes: dict) -> str:
    return " ".join(f"{k}x{v}" for k, v in opcodes.items()) or "-"


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(records) -> str:
    head = ("kernel" + " (* headline)", "sm", "warps", "regs", "spill st/ld", "local", "smem", "MB", "waves",
            "B/warp-instr", "global loads", "global stores")
    rows = []
    for r in records:
        if not r["ok"]:
            rows.append((r["name"] or f"[{r['module']}]", str(r["arch"] or "-"), "", "", "", "", "", "", "", "",
                         "ERROR " + r["error"].splitlines()[0][:100], ""))
            continue
        rows.append((r["name"] + (" *" if r.get("headline") else ""), str(r["arch"]), str(r["num_warps"]),
                     str(r["registers"]),
                     f"{r['spill_stores']}/{r['spill_loads']}", str(r["local"] + r["stack"]),
                     str(r["shared"]), _fmt(r.get("bytes") and r["bytes"] / 1e6, ".1f"),
                     _fmt(r.get("waves"), ".1f") + (" (persistent)" if r.get("persistent") else ""),
                     _fmt(r.get("bytes_per_warp_instruction"), ".1f"),
                     _short(r["loads"]), _short(r["stores"])))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    notes = [f"- {r['name']}: no 16-byte access by design: {r['why_not_vector']}"
             for r in records if r["ok"] and not r["expect_vector_io"] and r["arch"] == records[0]["arch"]]
    return "\n".join(out + ([""] + notes if notes else []))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80],
                        help="compute capabilities (90 = H100)")
    parser.add_argument("--module", nargs="+", default=None,
                        help="kernel modules to compile (default: all of fastmae.kernel_modules.KERNEL_MODULES)")
    parser.add_argument("--json", action="store_true", help="print JSON records instead of the table")
    args = parser.parse_args(argv)
    records = collect(args.arch, args.module)
    if args.json:
        json.dump(records, sys.stdout, indent=1)
        print()
    else:
        print(f"triton {triton.__version__}; bytes per thread: LDG.E.128 = 16, .64 = 8, plain = 4, .U16 = 2; "
              "MB, waves (132 SMs) and DRAM bytes per executed warp-instruction at the headline shape "
              "(tools/throughput.py)")
        print(format_table(records))
        print(summary_line(records))
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
