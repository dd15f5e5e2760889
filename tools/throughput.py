"""What the compiled code says about a kernel's speed: occupancy, waves, instructions per byte.

Read off the cubin (registers, shared memory) and the SASS (``cuobjdump -sass``, parsed by
``tools/sass.py``) of one kernel specialisation, with the launch it gets at the headline shape
(``programs`` and ``bytes`` in its spec, ``tools/kernel_specs``):

resident programs per SM
    the smallest of: registers (65,536 per SM; a warp holds ``ceil(regs / 8) * 8 * 32`` registers,
    allocated in units of 256), warps (64 per SM), shared memory (228 KB per SM, 1 KB reserved per
    block) and 32 blocks per SM — the H100 (sm_90) limits.
waves
    ``programs / (SMS * resident)``, ``SMS = 132`` (H100 SXM). Below ~4 waves the last, partial wave
    leaves SMs idle for a large part of the kernel's time.
executed warp-instructions
    per warp, every SASS instruction but ``NOP`` and the closing branch-to-itself counted once, and
    the instructions inside a loop (a backward branch) times its trip count (``loop_trips`` in the
    spec, outer loops first; nested loops multiply). Forward branches that skip code are counted as
    if taken: an upper bound, so the bytes per instruction below is a lower bound.
DRAM bytes per executed warp-instruction
    ``bytes / (programs * warps * executed_per_warp)``. An H100 issues ~1.05e12 warp-instructions/s
    (132 SMs x 4 schedulers x 1.98 GHz) against ~4 TB/s of DRAM bandwidth (3.35 TB/s H100 SXM,
    4.8 TB/s H200): a kernel that moves fewer than ~9 bytes per warp-instruction is limited by issue,
    not by memory.
"""

from __future__ import annotations

import math

from .sass import instructions, loops

SMS = 132  # H100 SXM streaming multiprocessors
REGS_PER_SM = 65536
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_BLOCK = 1024
ISSUE_BOUND_BYTES = 9.0  # DRAM bytes per warp-instruction below which an H100 kernel is issue-bound
BANDWIDTH_KERNEL_BYTES = 50e6  # kernels that move at least this much at the headline shape

def executed_per_warp(instrs, loop_trips=()) -> int | None:
    """Warp-instructions one warp executes (see the module docstring); None when a loop's trips are unknown."""
    spans = loops(instrs)
    if len(spans) > len(loop_trips):
        return None
    total = 0
    for addr, opcode, target in instrs:
        if opcode == "NOP" or (opcode == "BRA" and target == addr):  # padding after the last EXIT
            continue
        weight = 1
        for (start, end), trips in zip(spans, loop_trips):
            if start <= addr <= end:
                weight *= trips
        total += weight
    return total


def resident_programs(registers: int, warps: int, shared: int) -> int:
    """Programs (thread blocks) of ``warps`` warps one SM holds at once (sm_90 limits)."""
    warp_regs = math.ceil(max(registers, 1) / 8) * 8 * 32
    warp_regs = math.ceil(warp_regs / 256) * 256
    by_regs = (REGS_PER_SM // warp_regs) // warps
    by_warps = WARPS_PER_SM // warps
    by_smem = SMEM_PER_SM // (shared + SMEM_RESERVED_PER_BLOCK) if shared else BLOCKS_PER_SM
    return max(0, min(by_regs, by_warps, by_smem, BLOCKS_PER_SM))


def launch_figures(record: dict, spec: dict, sass: str) -> dict:
    """``resident``, ``waves``, ``executed_per_warp`` and ``bytes_per_warp_instruction`` for one record."""
    instrs = instructions(sass)
    executed = executed_per_warp(instrs, spec.get("loop_trips", ()))
    figures = {"sass_instructions": sum(op != "NOP" for _, op, _ in instrs), "loops": len(loops(instrs)),
               "executed_per_warp": executed, "programs": spec.get("programs"), "bytes": spec.get("bytes"),
               "persistent": bool(spec.get("persistent")), "headline": bool(spec.get("headline")),
               "persistent_work": spec.get("persistent_work"), "persistent_groups": spec.get("persistent_groups"),
               "resident": None, "waves": None, "bytes_per_warp_instruction": None}
    warps = record["num_warps"]
    resident = resident_programs(record["registers"], warps, record["shared"])
    figures["resident"] = resident
    if figures["programs"] and resident:
        figures["waves"] = figures["programs"] / (SMS * resident)
    if figures["programs"] and figures["bytes"] and executed:
        figures["bytes_per_warp_instruction"] = figures["bytes"] / (figures["programs"] * warps * executed)
    return figures


def is_bandwidth_kernel(record: dict) -> bool:
    """A kernel that moves at least ``BANDWIDTH_KERNEL_BYTES`` at the headline shape."""
    return (record.get("bytes") or 0) >= BANDWIDTH_KERNEL_BYTES


def persistent_fits(record: dict) -> bool:
    """A persistent grid whose programs are all resident at once (at most one wave at the registers
    it compiled to: no late programs running a second round alone) and whose work is balanced within
    one trip: ``trips = ceil(items / groups)`` and no fewer groups would do in as many trips
    (``(groups - 1) * trips < items``), so the last trip keeps more than ``groups - trips`` programs busy
    and every program loops ``trips`` or ``trips - 1`` times."""
    waves, items, groups = record.get("waves"), record.get("persistent_work"), record.get("persistent_groups")
    if waves is None or not items or not groups or waves > 1.0:
        return False
    trips = -(-items // groups)
    return (groups - 1) * trips < items


def meets_targets(record: dict) -> bool:
    """At least ``ISSUE_BOUND_BYTES`` per warp-instruction, and 4 waves or a persistent grid that fits
    (:func:`persistent_fits`)."""
    bpi, waves = record.get("bytes_per_warp_instruction"), record.get("waves")
    if bpi is None or bpi < ISSUE_BOUND_BYTES:
        return False
    return persistent_fits(record) if record.get("persistent") else (waves is not None and waves >= 4)


def summary_line(records) -> str:
    """The report's last line: the worst bytes per warp-instruction and the fewest waves over the
    headline bandwidth kernels compiled for sm_90, and the most waves of any persistent grid (which
    must stay within one)."""
    bw = [r for r in records if r.get("ok") and r["arch"] == 90 and r.get("headline") and is_bandwidth_kernel(r)]
    with_bpi = [r for r in bw if r.get("bytes_per_warp_instruction") is not None]
    with_waves = [r for r in bw if r.get("waves") is not None and not r.get("persistent")]
    persistent = [r for r in records if r.get("ok") and r["arch"] == 90 and r.get("persistent") and r.get("waves")]
    if with_bpi:
        worst = min(with_bpi, key=lambda r: r["bytes_per_warp_instruction"])
        line = (f"min bytes per warp-instruction over bandwidth kernels: {worst['bytes_per_warp_instruction']:.1f} "
                f"(kernel {worst['name']})")
    else:
        line = "min bytes per warp-instruction over bandwidth kernels: - (no sm_90 bandwidth kernel)"
    if with_waves:
        fewest = min(with_waves, key=lambda r: r["waves"])
        line += f"; min waves: {fewest['waves']:.1f} (kernel {fewest['name']})"
    else:
        line += "; min waves: -"
    if persistent:
        most = max(persistent, key=lambda r: r["waves"])
        balanced = all(persistent_fits(r) for r in persistent)
        line += (f"; persistent grids: max {most['waves']:.2f} waves (kernel {most['name']}), "
                 f"{'all' if balanced else 'NOT all'} within one wave and balanced")
    return line
