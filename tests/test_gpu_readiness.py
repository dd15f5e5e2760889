"""GPU readiness without a GPU: every kernel compiles for sm_90 and sm_80, and its cubin is clean.

``python -m tools.kernel_resources --json`` compiles each kernel module's specs (``tools/kernel_specs``) with the
specialisation the JIT gives aligned tensors and reads the cubin back (``cuobjdump``, ``ptxas -v``,
through ``tools/sass.py``). It runs ONCE, in a subprocess without ``TRITON_INTERPRET``
(``tools.sass.run_compiling``: this session interprets kernels, and an interpreted kernel cannot be
compiled). Per kernel module and architecture the tests then assert:

- every spec compiles;
- no register spills, no local memory, no stack frame (all of which live in slow local memory);
- no global atomics (kernels reduce deterministically);
- a spec with ``expect_vector_io`` issues at least one 16-byte global load or store (``LDG.E.128``,
  ``STG.E.128`` or wider); a spec without it says why in ``why_not_vector``.
"""

from __future__ import annotations

import importlib

import pytest
import triton

from fastmae.kernel_modules import KERNEL_MODULES
from tools.kernel_specs import compile_specs
from tools.sass import run_compiling, tools_missing

ARCHS = (90, 80)
SPEC_KEYS = {"name", "kernel", "signature", "constexprs", "aligned", "num_warps", "expect_vector_io", "why_not_vector"}


@pytest.fixture(scope="session")
def resources():
    """The harness's JSON records, from one subprocess for every kernel and architecture."""
    missing = tools_missing()
    if missing:
        pytest.skip(missing)
    return run_compiling("-m", "tools.kernel_resources", "--json", "--arch", *map(str, ARCHS), timeout=600)


def _describe(rec: dict) -> str:
    return f"{rec['module']}/{rec['name']} sm_{rec['arch']}"


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_compile_specs_are_plain_data(module):
    specs = compile_specs(module)
    assert specs, f"tools/kernel_specs/{module}.py lists no kernel"
    for spec in specs:
        assert SPEC_KEYS <= set(spec), f"{module} spec {spec.get('name')} lacks {SPEC_KEYS - set(spec)}"
        for name in spec["aligned"]:
            assert spec["signature"].get(name, "constexpr") != "constexpr", f"{spec['name']}: aligned {name}"
        if not spec["expect_vector_io"]:
            assert spec["why_not_vector"].strip(), f"{spec['name']}: no 16-byte access expected, and no reason given"


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_compile_specs_cover_every_kernel(module):
    # every kernel (a @triton.jit function named *_kernel; device helpers are inlined into them) a
    # kernel module defines or launches from _common has a spec
    from triton.runtime.interpreter import InterpretedFunction

    mod = importlib.import_module(f"fastmae.kernels.{module}")
    jitted = {v for v in vars(mod).values()
              if isinstance(v, (triton.runtime.JITFunction, InterpretedFunction)) and v.__name__.endswith("_kernel")}
    launched = {s["kernel"] for spec_module in KERNEL_MODULES for s in compile_specs(spec_module)}
    assert jitted, f"{module} defines no kernel"
    assert jitted <= launched, f"{module}: no spec for {sorted(k.__name__ for k in jitted - launched)}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_kernels_compile_clean(resources, module, arch):
    broken = [r for r in resources if r["module"] == module and r["arch"] is None]
    assert not broken, f"{module}: {broken[0]['error']}"
    records = [r for r in resources if r["module"] == module and r["arch"] == arch]
    assert records, f"{module} has no compiled kernel for sm_{arch}"
    for rec in records:
        assert rec["ok"], f"{_describe(rec)} does not compile: {rec['error']}\n{rec.get('traceback', '')}"
        assert rec["spill_stores"] == 0 and rec["spill_loads"] == 0, (
            f"{_describe(rec)} spills registers ({rec['spill_stores']} B stored, {rec['spill_loads']} B loaded; "
            f"{rec['registers']} registers)")
        assert rec["local"] == 0 and rec["stack"] == 0 and rec["local_ops"] == 0, (
            f"{_describe(rec)} uses local memory (local {rec['local']} B, stack {rec['stack']} B, "
            f"{rec['local_ops']} LDL/STL)")
        assert rec["atomics"] == 0, f"{_describe(rec)} issues {rec['atomics']} global atomics"
        if rec["expect_vector_io"]:
            assert rec["wide_accesses"] > 0, (
                f"{_describe(rec)} has no 16-byte global access: loads {rec['loads']}, stores {rec['stores']}")
        else:
            assert rec["why_not_vector"].strip(), f"{_describe(rec)}: no 16-byte access expected, and no reason given"


@pytest.mark.slow
def test_harness_reads_load_widths(resources):
    # the SASS parser must see the kernels' accesses at all: a regex that matches nothing would pass
    # every check above, so at least one kernel must show a 16-byte access and every kernel a store
    compiled = [r for r in resources if r.get("ok")]
    assert compiled
    assert any(r["wide_accesses"] > 0 for r in compiled)
    assert all(r["stores"] for r in compiled), [_describe(r) for r in compiled if not r["stores"]]


@pytest.mark.slow
def test_headline_bandwidth_kernels_meet_the_targets(resources):
    # Read from the compiled code (tools/throughput.py): every launch of a bf16-autocast training step
    # (or an op's bf16 case) that moves >= 50 MB at ViT-B/16, batch 256, issues >= 9 DRAM bytes per
    # warp-instruction and runs >= 4 waves on 132 SMs, or a persistent grid.
    from tools.throughput import ISSUE_BOUND_BYTES, is_bandwidth_kernel, meets_targets

    checked = [r for r in resources if r.get("ok") and r["arch"] == 90 and r.get("headline") and is_bandwidth_kernel(r)]
    assert len(checked) >= 8, [r["name"] for r in checked]
    missed = [f"{r['name']}: {r['bytes_per_warp_instruction']} B/warp-instr (floor {ISSUE_BOUND_BYTES}), "
              f"{r['waves']} waves{' (persistent)' if r['persistent'] else ''}"
              for r in checked if not meets_targets(r)]
    assert not missed, missed


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_pure_bf16_launches_meet_the_targets(resources, arch):
    # A model run in pure bf16 (model.bfloat16(), no autocast) launches these. The encoder's backward
    # with trainable positions moves 21 MB at the headline, under the 50 MB floor of the test above,
    # and is held to the same targets; so is every one of them on sm_80.
    from tools.throughput import meets_targets

    names = {"encoder_input_fwd_bf16", "encoder_input_bwd_bf16_cls_pos", "decoder_input_fwd_bf16",
             "decoder_input_bwd_bf16", "masked_tokens_fwd_bf16", "masked_tokens_bwd_bf16"}
    checked = [r for r in resources if r.get("ok") and r["arch"] == arch and r["name"] in names]
    assert {r["name"] for r in checked} == names and all(r["headline"] for r in checked)
    missed = [f"{r['name']}: {r['bytes_per_warp_instruction']} B/warp-instr, {r['waves']} waves"
              f"{' (persistent)' if r['persistent'] else ''}" for r in checked if not meets_targets(r)]
    assert not missed, missed


@pytest.mark.slow
def test_persistent_grids_fit_one_wave(resources):
    # every persistent grid (not only the headline ones), at the registers it compiled to: all its
    # programs resident at once and its images spread within one trip (tools/throughput.py)
    from tools.throughput import persistent_fits

    checked = [r for r in resources if r.get("ok") and r["arch"] == 90 and r.get("persistent")]
    assert len(checked) >= 4, [r["name"] for r in checked]
    missed = [f"{r['name']}: {r['programs']} programs, {r['resident']} resident an SM "
              f"({r['registers']} registers), {r['waves']:.2f} waves, "
              f"{r['persistent_work']} images in {r['persistent_groups']} groups"
              for r in checked if not persistent_fits(r)]
    assert not missed, missed


def test_persistent_fits():
    from tools.throughput import persistent_fits

    base = {"persistent_work": 256, "persistent_groups": 43}
    assert persistent_fits({**base, "waves": 2107 / 2112})
    assert not persistent_fits({**base, "waves": 2156 / 2112})  # 44 late programs run a second round
    # 50 groups take 6 trips too, with 44 of them idle in the last: 43 groups would do
    assert not persistent_fits({"waves": 0.9, "persistent_work": 256, "persistent_groups": 50})
    assert not persistent_fits({"waves": 0.9})  # the spec must say how the work is spread


def test_sass_loops_and_counts():
    # the instruction counter on a hand-written listing: a loop (a backward branch) weighs its trips,
    # the final self-branch is not a loop, NOPs do not count
    from tools.sass import instructions, loops
    from tools.throughput import executed_per_warp

    sass = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0020*/               @P0 BRA 0x10 ;
        /*0030*/                   EXIT ;
        /*0040*/                   BRA 0x40;
        /*0050*/                   NOP;
    """
    instrs = instructions(sass)
    assert [op for _, op, _ in instrs] == ["S2R", "IADD3", "BRA", "EXIT", "BRA", "NOP"]
    assert loops(instrs) == [(0x10, 0x20)]
    assert executed_per_warp(instrs, (5,)) == 1 + 5 * 2 + 1  # S2R, the loop 5 times, EXIT
    assert executed_per_warp(instrs) is None  # trips unknown
