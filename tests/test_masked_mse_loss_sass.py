"""The compiled masked_mse_loss kernels keep the layout the module docstring describes.

``kernels/masked_mse_loss.py`` loads the image in image order with 16-byte loads and permutes it to
pred's row order in registers. Nothing in the source forces a compiler to keep it that way: a
layout change in Triton (or in the kernel) can bring back 2-byte gathers of the image or a round trip
through shared memory, and every result would still be right. So this reads the cubins that
``tools/kernel_specs/masked_mse_loss.py`` describes (ViT-B/16, 224 px, batch 256, mask 0.75), built
for sm_90 and sm_80 by whichever Triton is installed, and asserts:

- the global loads of pred and the image are exactly the 16-byte ones the layout implies (``V``
  contiguous values a load, ``G * C`` loads of pred and of the image per thread and row), and no
  load narrower than 4 bytes remains (a bf16 gather would show as ``LDG.E.U16``);
- grad_pred is written with 16-byte stores only;
- shared memory holds no more than the end-of-program reduction: no ``LDSM``/``STSM`` and at most a
  handful of ``STS``/``LDS`` (a layout conversion of a tile shows as dozens);
- the row kernels are straight-line code (no loop), and every launch that moves >= 50 MB fills
  >= 4 waves of the 132 SMs of an H100 and moves >= 9 DRAM bytes per executed warp-instruction.

Waves and bytes per warp-instruction are defined as in ``tools/throughput.py``: resident programs per SM
from registers (65,536 per SM; a thread's count rounded up to 8, allocated per warp), shared memory
(228 KB per SM, 1 KB reserved per block), 64 warps and 32 blocks per SM; bytes are the spec's
``"bytes"`` (each input read once, each output written once), instructions the kernel's SASS
instructions other than ``NOP`` (straight-line code runs each once).

Compiling takes a while (``@pytest.mark.slow``). The cubins are built once, by :func:`compiled_records`
in a subprocess without ``TRITON_INTERPRET`` (``tools.sass.call_compiling``: this session interprets
the kernels); ``python -m tools.sass tests/test_masked_mse_loss_sass.py:table`` prints the table of
the records the tests read.
"""

from __future__ import annotations

import pytest

from tools import throughput
from tools.sass import call_compiling, instructions, loops, opcode_counts, tools_missing
from tools.throughput import SMS, executed_per_warp

ARCHS = (90, 80)

BIG_LAUNCH = 50e6  # bytes: the launches the waves and bytes-per-instruction floors apply to
MIN_WAVES = 4
MIN_BYTES_PER_WARP_INSTRUCTION = 9.0
# STS + LDS allowed: the end-of-program sum crosses the warps through shared memory (one or two
# values per warp, two sums in the full form)
MAX_SHARED_ACCESSES = 8

_SIZE = {"bf16": 2, "fp16": 2, "fp32": 4}


# --------------------------------------------------------------------------------------------------
# reading the cubins (runs in the subprocess)
# --------------------------------------------------------------------------------------------------


def read_sass(sass: str) -> dict:
    """Opcode counts (with modifiers) and control flow of one kernel's SASS (``cuobjdump -sass``);
    instructions and loops as ``tools/throughput.py`` counts them."""
    instrs = instructions(sass)
    spans = loops(instrs)  # static count: each loop body once
    return {"instructions": executed_per_warp(instrs, (1,) * len(spans)), "loops": spans,
            "opcodes": dict(opcode_counts(sass))}


def collect(archs=ARCHS) -> list[dict]:
    """One record per (spec, arch): kernel_resources' figures plus the SASS counts above."""
    import tempfile

    from tools import kernel_resources as kr
    from tools.kernel_specs import compile_specs

    records = []
    with tempfile.TemporaryDirectory(prefix="fastmae-mse-sass-") as workdir:
        for spec in compile_specs("masked_mse_loss"):
            for arch in archs:
                compiled = kr.compile_spec(spec, arch)
                stem = f"{spec['name']}_{arch}"
                rec, sass = kr.inspect_cubin(compiled, arch, workdir, stem)
                rec.update(read_sass(sass))
                rec.update(name=spec["name"], arch=arch, num_warps=spec["num_warps"], programs=spec["programs"],
                           bytes=spec["bytes"], constexprs={k: v for k, v in spec["constexprs"].items()
                                                            if isinstance(v, (bool, int, float))},
                           signature={k: v for k, v in spec["signature"].items() if v != "constexpr"})
                records.append(rec)
    return records


def edge_specs() -> list[dict]:
    """The row and sum kernels at shapes where the JIT turns int arguments into constants (an int
    equal to 1: one row, one row per image, a shift of 1) or pads the chunks (p = 14, p = 3)."""
    import torch

    from fastmae.kernels import masked_mse_loss as k
    from tools.kernel_specs.masked_mse_loss import _jit_view

    cases = [  # name, patch, pred [N, R, P] dtype, imgs [N, C, H, W] dtype, masked form
        ("one_row", 16, (1, 1), "bf16", (1, 3, 16, 32), "bf16", True),  # NR = R = 1, GW = 2: shift 1
        ("two_rows_per_image", 16, (2, 2), "fp32", (2, 3, 16, 32), "fp32", False),  # R = 2: shift 1
        ("p14", 14, (2, 6), "bf16", (2, 3, 28, 42), "fp32", False),  # 98 chunks of 128
        ("p3", 3, (2, 5), "fp16", (2, 1, 6, 9), "fp16", True),  # one pixel a load
    ]
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    specs = []
    for name, patch, (n, r), pred_t, img_shape, img_t, masked in cases:
        c = img_shape[1]
        pred = torch.empty(n, r, patch * patch * c, dtype=dtypes[pred_t], device="meta")
        imgs = torch.empty(*img_shape, dtype=dtypes[img_t], device="meta")
        num_patches = (img_shape[2] // patch) * (img_shape[3] // patch)
        ids = torch.empty(n, r, dtype=torch.int64, device="meta") if masked else None
        mask = None if masked else torch.empty(n, num_patches, dtype=torch.float32, device="meta")
        programs, _, kwargs = k._launch_args(pred, imgs, mask, ids, patch, True)
        num_warps = kwargs.pop("num_warps")
        ptrs = {"PRED": f"*{pred_t}", "IMGS": f"*{img_t}", "MASK": f"*{pred_t}" if masked else "*fp32",
                "IDS": "*i64" if masked else f"*{pred_t}"}
        for kernel, args, extra in (
            (k._masked_mse_loss_kernel, {**kwargs, "NUM_PROGRAMS": programs}, {"PARTIAL": "*fp32"}),
            (k._masked_mse_loss_bwd_kernel, kwargs,
             {"GRAD_LOSS": "*fp32", "INV_DEN": "*fp32", "GRAD_PRED": f"*{pred_t}"}),
        ):
            pointers = {**ptrs, **extra}
            specs.append({"name": f"{kernel.__name__}_{name}", "kernel": kernel, "num_warps": num_warps,
                          **_jit_view(kernel, {**args, **dict.fromkeys(pointers)}, pointers)})
        args = k._sum_args(programs, n * r, not masked)
        num_warps = args.pop("num_warps")
        pointers = {"PARTIAL": "*fp32", "LOSS": "*fp32", "INV_DEN": "*fp32"}
        specs.append({"name": f"_masked_mse_loss_sum_kernel_{name}", "kernel": k._masked_mse_loss_sum_kernel,
                      "num_warps": num_warps,
                      **_jit_view(k._masked_mse_loss_sum_kernel, {**args, **dict.fromkeys(pointers)}, pointers)})
    return specs


def compile_edges(arch: int = 90) -> list[dict]:
    """``{name, ok, error}`` for each of :func:`edge_specs` compiled for ``sm_<arch>``."""
    from tools import kernel_resources as kr

    out = []
    for spec in edge_specs():
        try:
            kr.compile_spec(spec, arch)
            out.append({"name": spec["name"], "ok": True, "error": ""})
        except Exception as e:  # report every failure, not only the first
            out.append({"name": spec["name"], "ok": False, "error": f"{type(e).__name__}: {str(e)[-1500:]}"})
    return out


# --------------------------------------------------------------------------------------------------
# waves and bytes per warp-instruction
# --------------------------------------------------------------------------------------------------


def resident_programs(registers: int, shared: int, num_warps: int) -> int:
    """Programs one SM holds at once (H100; ``tools/throughput.py``'s limits)."""
    return throughput.resident_programs(registers, num_warps, shared)


def waves(rec: dict) -> float:
    return rec["programs"] / (SMS * resident_programs(rec["registers"], rec["shared"], rec["num_warps"]))


def bytes_per_warp_instruction(rec: dict) -> float:
    """DRAM bytes the launch moves / warp-instructions it executes (straight-line code)."""
    return rec["bytes"] / (rec["programs"] * rec["num_warps"] * rec["instructions"])


def compiled_records() -> dict:
    """``{"records": collect(), "edges": compile_edges()}``: what the tests read (run where the kernels
    compile)."""
    return {"records": collect(), "edges": compile_edges()}


def table(records=None) -> str:
    """The records (by default :func:`collect`'s) as a table, one line per kernel and arch."""
    import triton

    records = collect() if records is None else records
    head = (f"{'kernel':44} {'sm':>3} {'regs':>4} {'smem':>5} {'STS/LDS':>7} {'instr':>5} {'waves':>6} {'B/wi':>5}"
            f"  loads / stores")
    lines = [head]
    for r in records:
        shared_ops = sum(v for k, v in r["opcodes"].items() if k.startswith(("STS", "LDS")))
        lines.append(
            f"{r['name']:44} {r['arch']:>3} {r['registers']:>4} {r['shared']:>5} {shared_ops:>7} "
            f"{r['instructions']:>5} {waves(r):>6.2f} {bytes_per_warp_instruction(r):>5.1f}  "
            + " ".join(f"{k}x{v}" for k, v in {**r["loads"], **r["stores"]}.items()))
    return f"triton {triton.__version__}\n" + "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled():
    """``{"records": collect(), "edges": compile_edges()}`` from one subprocess."""
    missing = tools_missing()
    if missing:
        pytest.skip(missing)
    return call_compiling(compiled_records, timeout=1200)


@pytest.fixture(scope="module")
def records(compiled):
    return compiled["records"]


ODD = "_odd_pred"  # specs of bf16 pred starting at an odd element: read value by value, not the fast path


def _row_kernels(records):
    """The row kernels of the aligned (fast-path) specialisations."""
    rows = [r for r in records if "_sum_" not in r["name"] and ODD not in r["name"]]
    assert rows, "no row kernel compiled"
    return rows


@pytest.mark.slow
def test_odd_element_pred_is_read_value_by_value(records):
    # bf16 pred 2 bytes past a 4-byte boundary: every value of the thread's chunks a 2-byte load (no
    # 32-bit word, which would be misaligned), the image still 16 bytes at a time
    odd = [r for r in records if ODD in r["name"]]
    assert odd, "no odd-element spec compiled"
    for rec in odd:
        c = rec["constexprs"]
        assert not c["PRED_WORDS"] and c["IMG_WORDS"], c
        rows_per_thread = max(1, c["BLOCK_R"] * c["BLOCK_CH"] // (32 * rec["num_warps"]))
        _, img_loads = _wide_loads_per_thread(rec)
        loads = rec["loads"]
        where = f"{rec['name']} sm_{rec['arch']}: loads {loads}"
        assert loads.get("LDG.E.U16", 0) == rows_per_thread * c["S"] * c["C"], where
        assert loads.get("LDG.E.128", 0) == img_loads, where


def _dtypes(rec) -> tuple[str, str]:
    return rec["signature"]["PRED"].lstrip("*"), rec["signature"]["IMGS"].lstrip("*")


def _wide_loads_per_thread(rec) -> tuple[int, int]:
    """16-byte loads of pred and of the image a thread must issue: per row it holds one chunk, ``S``
    pixels of a patch row in every channel and their ``S * C`` values of pred, and the layout moves
    all of those bytes 16 at a time (p = 16: ``S * size`` is a multiple of 16)."""
    c = rec["constexprs"]
    pred_t, img_t = _dtypes(rec)
    rows_per_thread = max(1, c["BLOCK_R"] * c["BLOCK_CH"] // (32 * rec["num_warps"]))
    chunk = c["S"] * c["C"]  # values of pred, and pixels of the image, per thread and row
    assert chunk * _SIZE[pred_t] % 16 == 0 and chunk * _SIZE[img_t] % 16 == 0, rec["constexprs"]
    return rows_per_thread * chunk * _SIZE[pred_t] // 16, rows_per_thread * chunk * _SIZE[img_t] // 16


@pytest.mark.slow
def test_loads_are_16_bytes_and_count_as_the_layout_says(records):
    for rec in _row_kernels(records):
        pred_loads, img_loads = _wide_loads_per_thread(rec)
        loads = dict(rec["loads"])
        where = f"{rec['name']} sm_{rec['arch']}: loads {rec['loads']}"
        assert loads.pop("LDG.E.128", 0) == pred_loads + img_loads, where
        # what else is read: the ids (one int64), the mask weight or the two backward scalars
        narrow = {k: v for k, v in loads.items() if k not in ("LDG.E.64", "LDG.E")}
        assert not narrow, f"{where}: loads narrower than 4 bytes (an image gather?)"
        assert loads.get("LDG.E.64", 0) <= 1 and loads.get("LDG.E", 0) <= 3, where


@pytest.mark.slow
def test_grad_pred_is_written_with_16_byte_stores(records):
    for rec in _row_kernels(records):
        if "_bwd_" not in rec["name"]:
            continue
        pred_loads, _ = _wide_loads_per_thread(rec)  # the stores mirror pred's loads
        assert rec["stores"] == {"STG.E.128": pred_loads}, f"{rec['name']} sm_{rec['arch']}: {rec['stores']}"


@pytest.mark.slow
def test_no_shared_memory_round_trip(records):
    # the permutation to row order is a renaming of registers: shared memory only carries the
    # end-of-program sum (one value per warp). (The odd-element path's 2-byte loads of pred arrive in
    # another layout, converted through shared memory: a fallback, not the fast path.)
    for rec in records:
        if ODD in rec["name"]:
            continue
        ops = rec["opcodes"]
        matrix = {k: v for k, v in ops.items() if k.startswith(("LDSM", "STSM"))}
        shared_ops = sum(v for k, v in ops.items() if k.startswith(("STS", "LDS")))
        where = f"{rec['name']} sm_{rec['arch']}"
        assert not matrix, f"{where}: {matrix} (a layout conversion through shared memory)"
        assert shared_ops <= MAX_SHARED_ACCESSES, f"{where}: {shared_ops} STS/LDS"
        assert rec["shared"] <= 1024, f"{where}: {rec['shared']} B of shared memory"


@pytest.mark.slow
def test_row_kernels_are_straight_line(records):
    for rec in _row_kernels(records):
        assert not rec["loops"], f"{rec['name']} sm_{rec['arch']}: loops at {rec['loops']}"


@pytest.mark.slow
def test_big_launches_fill_the_gpu_and_move_9_bytes_per_warp_instruction(records):
    # the training launches (the odd-element path is a correctness fallback, not one of them)
    big = [r for r in records if r["arch"] == 90 and r["bytes"] >= BIG_LAUNCH and ODD not in r["name"]]
    assert big, "no launch of >= 50 MB"
    for rec in big:
        w, b = waves(rec), bytes_per_warp_instruction(rec)
        where = (f"{rec['name']}: {rec['registers']} registers, {rec['instructions']} instructions x "
                 f"{rec['num_warps']} warps x {rec['programs']} programs for {rec['bytes'] / 1e6:.1f} MB")
        assert w >= MIN_WAVES, f"{where}: {w:.2f} waves"
        assert b >= MIN_BYTES_PER_WARP_INSTRUCTION, f"{where}: {b:.2f} B per warp-instruction"


@pytest.mark.slow
def test_kernels_compile_where_the_jit_makes_constants(compiled):
    # an int argument equal to 1 reaches the kernel as a plain constant (no tensor methods), and
    # odd patch sides pad the chunk grid: every kernel must still compile
    broken = [e for e in compiled["edges"] if not e["ok"]]
    assert compiled["edges"] and not broken, "\n".join(f"{e['name']}: {e['error']}" for e in broken)


def test_sass_reader():
    # the parser itself, on a fragment of real sm_90 SASS: NOPs and the closing self-branch are not
    # executed, a backward branch is a loop, predicated instructions count
    sass = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/              @!P1 LDG.E.128 R8, desc[UR6][R20.64] ;
        /*0020*/                   FADD R3, R3, R4 ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   STG.E desc[UR6][R2.64], R7 ;
        /*0050*/                   EXIT ;
        /*0060*/                   BRA 0x60;
        /*0070*/                   NOP;
    """
    out = read_sass(sass)
    assert out["instructions"] == 6
    assert out["loops"] == [(0x10, 0x30)]
    assert out["opcodes"]["LDG.E.128"] == 1 and out["opcodes"]["STG.E"] == 1


def test_waves_definition():
    # 4 warps of 88 registers: 88 * 32 = 2816 per warp, 23 warps by registers -> 5 programs per SM
    assert resident_programs(88, 1024, 4) == 5
    # registers round up to 8: 65 -> 72
    assert resident_programs(65, 0, 4) == resident_programs(72, 0, 4) == 7
    # few registers: the 64 warps per SM bound
    assert resident_programs(16, 0, 4) == 16
    # shared memory bound: 228 KB / (20 KB + 1 KB) = 10.9
    assert resident_programs(16, 20 * 1024, 1) == 10

