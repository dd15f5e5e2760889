"""Reading compiled kernels: the CUDA tools of the triton wheel, the SASS they print, and a run of a
compile where the Triton interpreter is off.

The compiled-code reports (``tools/kernel_resources.py``, ``tools/throughput.py``) and the tests that
read cubins (``tests/test_gpu_readiness.py``, ``tests/test_masked_mse_loss_sass.py``) share it:

- the tools, from ``triton/backends/nvidia/bin`` (else ``PATH``): ``cuobjdump -res-usage``
  (:func:`res_usage`: registers, stack, static shared and local memory), ``cuobjdump -sass``
  (:func:`disassemble`) and ``ptxas -v`` (:func:`ptxas_spills`);
- one parser of a ``cuobjdump -sass`` listing: :func:`instructions` (address, opcode, branch target),
  :func:`opcode_counts` (opcodes with their modifiers, ``LDG.E.128``), :func:`loops`, and the global
  and local memory accesses with their width per thread (:func:`memory_accesses`, :func:`access_bytes`);
- :func:`run_compiling` and :func:`call_compiling`: code run in a subprocess from the repository root
  with ``TRITON_INTERPRET`` removed (a test session interprets the kernels, and a kernel decorated
  under the interpreter cannot be compiled), its JSON returned.

    python -m tools.sass FILE.py:FUNCTION      # FUNCTION() with the kernels compiled: its text or JSON

Importing this module imports neither triton nor the kernels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root

# "/*0170*/   @P0 BRA.U 0x190 ;" -> address, opcode, modifiers (".U"), operands (" 0x190 ")
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)")  # a branch's target address
_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")  # cuobjdump -res-usage
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")  # ptxas -v

# global memory opcodes: loads, stores, async global -> shared copies, atomics; and local memory
GLOBAL_LOADS = ("LDG", "LDGSTS")
GLOBAL_STORES = ("STG",)
LOCAL_ACCESSES = ("LDL", "STL")
GLOBAL_ATOMICS = ("ATOMG", "ATOM", "RED")


# --------------------------------------------------------------------------------------------------
# the CUDA tools
# --------------------------------------------------------------------------------------------------


def bin_dir() -> str:
    """The CUDA tools' folder in the installed triton wheel."""
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def tools_missing() -> str | None:
    """Why the CUDA tools the compiled-code reports need (the triton wheel's ``cuobjdump`` and
    ``ptxas``) are not there, or ``None``: for tests to skip."""
    try:
        folder = bin_dir()
    except ImportError:
        return "triton is not installed"
    for name in ("cuobjdump", "ptxas"):
        if not os.path.isfile(os.path.join(folder, name)):
            return f"{name} is not shipped in {folder}"
    return None


def tool(name: str) -> str:
    """The path of the CUDA tool ``name``: the triton wheel's, else the one on ``PATH``."""
    path = os.path.join(bin_dir(), name)
    if os.path.isfile(path):
        return path
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is neither in {bin_dir()} nor on PATH")
    return found


def res_usage(cubin: str) -> dict:
    """``cuobjdump -res-usage`` of the cubin file: ``registers`` (per thread), ``stack``, ``shared``
    (static, bytes per block) and ``local`` (bytes per thread)."""
    out = subprocess.run([tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True, check=True)
    registers, stack, shared, local = (int(v) for v in _RES.search(out.stdout).groups())
    return {"registers": registers, "stack": stack, "shared": shared, "local": local}


def disassemble(cubin: str) -> str:
    """``cuobjdump -sass`` of the cubin file: its SASS listing."""
    return subprocess.run([tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout


def sm_name(arch: int) -> str:
    """The GPU name Triton targets for compute capability ``arch`` (wgmma etc. need sm_90a)."""
    return f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"


def _ptxas_candidates(arch: int) -> list[str]:
    """The ptxas Triton itself uses for ``arch`` first (3.9 uses ``ptxas-blackwell`` from sm_90 on)."""
    paths = []
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            paths.append(get_ptxas(arch).path)
        except TypeError:  # older Triton: get_ptxas() takes no argument
            paths.append(get_ptxas().path)
    except (ImportError, AttributeError, RuntimeError):
        pass
    for name in ("ptxas-blackwell", "ptxas"):
        try:
            paths.append(tool(name))
        except FileNotFoundError:
            pass
    return list(dict.fromkeys(paths))


# What Triton itself passes to ptxas beyond -v (3.9 adds --regAllocOptLevel=2, which changes the
# register allocation: without it the report would describe another binary). Tried in order, the
# first a ptxas accepts wins.
_PTXAS_FLAGS = (["-lineinfo", "--regAllocOptLevel=2"], ["-lineinfo"])


def ptxas_log(arch: int, ptx: str, out: str) -> str:
    """``ptxas -v`` on the PTX file ``ptx`` (cubin written to ``out``), with the options Triton uses
    (the first ptxas that accepts its PTX version): its report."""
    errors = []
    for ptxas in _ptxas_candidates(arch):
        for flags in _PTXAS_FLAGS:
            run = subprocess.run([ptxas, "-v", *flags, f"--gpu-name={sm_name(arch)}", ptx, "-o", out],
                                 capture_output=True, text=True)
            if run.returncode == 0:
                return run.stdout + run.stderr
            errors.append(f"{ptxas} {' '.join(flags)}: {run.stderr.strip()[:200]}")
    raise RuntimeError("no ptxas accepted the PTX: " + "; ".join(errors))


def ptxas_spills(arch: int, ptx: str, out: str) -> tuple[int, int]:
    """Bytes of register spill stores and spill loads ``ptxas -v`` reports for the PTX file (every
    function of it summed)."""
    log = ptxas_log(arch, ptx, out)
    spills = [tuple(int(v) for v in m) for m in _SPILL.findall(log)]
    if not spills:
        raise RuntimeError(f"no spill report in the ptxas -v output:\n{log}")
    return sum(s for s, _ in spills), sum(loads for _, loads in spills)


# --------------------------------------------------------------------------------------------------
# the SASS listing
# --------------------------------------------------------------------------------------------------


def instructions(sass: str) -> list[tuple[int, str, int | None]]:
    """``(address, opcode, branch target or None)`` of every SASS instruction of one kernel; the opcode
    without its modifiers (``LDG``, not ``LDG.E.128``). Predicated instructions count."""
    out = []
    for addr, opcode, _, operands in _INSTRUCTION.findall(sass):
        target = None
        if opcode == "BRA":
            found = _TARGET.search(operands)
            target = int(found.group(1), 16) if found else None
        out.append((int(addr, 16), opcode, target))
    return out


def opcode_counts(sass: str) -> Counter:
    """How many times each opcode, with its modifiers (``LDG.E.128``, ``STS``), appears in the listing."""
    return Counter(opcode + modifiers for _, opcode, modifiers, _ in _INSTRUCTION.findall(sass))


def loops(instrs) -> list[tuple[int, int]]:
    """``(start, end)`` addresses of each loop (a branch back to an earlier address) of
    :func:`instructions`' list, by start address.

    The branch a kernel ends with, to its own address (``BRA`` to itself after ``EXIT``), is not a loop.
    """
    found = {(target, addr) for addr, opcode, target in instrs
             if opcode == "BRA" and target is not None and target < addr}
    return sorted(found)


def access_bytes(opcode: str) -> int:
    """Bytes one thread moves with the SASS load/store ``opcode``
    (``LDG.E.128`` -> 16, ``STG.E.U16`` -> 2)."""
    for part in opcode.split(".")[1:]:
        if part.isdigit() and int(part) in (64, 128, 256):
            return int(part) // 8
        if part in ("U8", "S8"):
            return 1
        if part in ("U16", "S16"):
            return 2
    return 4


def memory_accesses(sass: str) -> dict:
    """The listing's memory instructions: ``loads`` and ``stores`` (global, by opcode with modifiers,
    sorted; ``LDGSTS`` async copies to shared memory count as loads), ``local_ops`` (``LDL``/``STL``),
    ``atomics`` (global: ``ATOMG``, ``ATOM``, ``RED``) and ``wide_accesses`` (global loads and stores
    of >= 16 bytes per thread)."""
    loads, stores, local_ops, atomics = {}, {}, 0, 0
    for full, n in opcode_counts(sass).items():
        opcode = full.split(".")[0]
        if opcode in GLOBAL_LOADS:
            loads[full] = n
        elif opcode in GLOBAL_STORES:
            stores[full] = n
        elif opcode in LOCAL_ACCESSES:
            local_ops += n
        elif opcode in GLOBAL_ATOMICS:
            atomics += n
    wide = sum(n for full, n in {**loads, **stores}.items() if access_bytes(full) >= 16)
    return {"local_ops": local_ops, "atomics": atomics, "loads": dict(sorted(loads.items())),
            "stores": dict(sorted(stores.items())), "wide_accesses": wide}


# --------------------------------------------------------------------------------------------------
# compiling from a session that interprets
# --------------------------------------------------------------------------------------------------


def run_compiling(*args: str, timeout: float):
    """Run ``python ARGS`` (e.g. ``"-m", "tools.kernel_resources", "--json"``) from the repository root
    with ``TRITON_INTERPRET`` removed: the JSON it prints (the whole of its stdout, or its last line).

    Raises:
        RuntimeError: it printed no JSON (the exit status and the end of its stderr say why).
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    lines = run.stdout.strip().splitlines()
    for text in (run.stdout, lines[-1] if lines else ""):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    raise RuntimeError(f"python {' '.join(args)} printed no JSON (exit {run.returncode}):\n{run.stderr[-3000:]}")


def call_compiling(function, *, timeout: float):
    """``function()`` (a module-level function of a file) called in a subprocess where the kernels
    compile (:func:`run_compiling`): its result, through JSON."""
    path = Path(sys.modules[function.__module__].__file__).resolve()
    return run_compiling("-m", "tools.sass", f"{path.relative_to(ROOT)}:{function.__name__}", "--json",
                         timeout=timeout)


def _main(argv) -> int:
    import importlib.util

    parser_help = "usage: python -m tools.sass FILE.py:FUNCTION [--json]"
    if not argv or ":" not in argv[0]:
        print(parser_help, file=sys.stderr)
        return 2
    file, name = argv[0].rsplit(":", 1)
    spec = importlib.util.spec_from_file_location(Path(file).stem, ROOT / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = getattr(module, name)()
    if "--json" in argv[1:] or not isinstance(result, str):
        json.dump(result, sys.stdout)
        print()
    else:
        print(result)
    return 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # before anything imports the kernels: compile for real
    sys.exit(_main(sys.argv[1:]))
