"""The SASS reader (``tools/sass.py``) on hand-written listings, and its compiling-subprocess helper.

The compiled-code tests (``test_gpu_readiness.py``, ``test_masked_mse_loss_sass.py``) assert on what
this reader counts; a reader that missed an instruction form would let them pass on nothing.
"""

import pytest

from tools.sass import access_bytes, instructions, memory_accesses, opcode_counts, run_compiling

# sm_90 SASS as cuobjdump prints it: predicated forms (@P0, @!P1, @!PT, @UP0), the encoding comment
# after each instruction, opcodes that contain a memory opcode's letters without being one
# (LDGDEPBAR, REDUX, ATOMS: shared-memory atomics), and the closing self-branch
LISTING = """
        Function : _some_kernel
        /*0000*/                   LDC R1, c[0x0][0x28] ;                          /* 0x00000a00ff017b82 */
        /*0010*/              @!P1 LDG.E.128 R8, desc[UR6][R20.64] ;               /* 0x000000061408a981 */
        /*0020*/               @P0 LDG.E.U16 R3, desc[UR6][R4.64] ;
        /*0030*/              @!PT LDGSTS.E.BYPASS.128 [R5], desc[UR6][R6.64] ;
        /*0040*/                   LDGDEPBAR ;
        /*0050*/                   LDL.64 R10, [R1] ;
        /*0060*/                   STL [R1+0x8], R2 ;
        /*0070*/                   REDUX.SUM UR4, R0 ;
        /*0080*/                   ATOMS.ADD R0, [R2], R3 ;
        /*0090*/              @UP0 RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR6][R4.64], R7 ;
        /*00a0*/                   ATOMG.E.ADD.STRONG.GPU PT, R9, desc[UR6][R4.64], R7 ;
        /*00b0*/                   STG.E.128 desc[UR6][R2.64], R8 ;
        /*00c0*/                   STG.E desc[UR6][R2.64+0x10], R7 ;
        /*00d0*/                   EXIT ;
        /*00e0*/                   BRA 0xe0;
        /*00f0*/                   NOP;
"""


def test_every_instruction_form_is_read():
    opcodes = [op for _, op, _ in instructions(LISTING)]
    assert opcodes == ["LDC", "LDG", "LDG", "LDGSTS", "LDGDEPBAR", "LDL", "STL", "REDUX", "ATOMS", "RED", "ATOMG",
                       "STG", "STG", "EXIT", "BRA", "NOP"]
    assert instructions(LISTING)[-2] == (0xE0, "BRA", 0xE0)
    counts = opcode_counts(LISTING)
    assert counts["LDG.E.128"] == 1 and counts["LDGSTS.E.BYPASS.128"] == 1 and counts["STG.E"] == 1
    assert sum(counts.values()) == 16


def test_memory_accesses_count_global_and_local_memory_only():
    acc = memory_accesses(LISTING)
    assert acc["loads"] == {"LDG.E.128": 1, "LDG.E.U16": 1, "LDGSTS.E.BYPASS.128": 1}
    assert acc["stores"] == {"STG.E": 1, "STG.E.128": 1}
    assert acc["local_ops"] == 2  # LDL, STL
    assert acc["atomics"] == 2  # RED, ATOMG; not REDUX or ATOMS
    assert acc["wide_accesses"] == 3  # the two 16-byte loads and the 16-byte store


@pytest.mark.parametrize("opcode, nbytes", [("LDG.E.128", 16), ("LDG.E.64", 8), ("LDG.E", 4), ("LDG.E.U16", 2),
                                            ("STG.E.U8", 1), ("LDG.E.S16.CONSTANT", 2), ("STG.E.256", 32)])
def test_access_bytes(opcode, nbytes):
    assert access_bytes(opcode) == nbytes


def test_run_compiling_returns_the_json_or_says_why_not():
    # the JSON may follow other output (its last line); without TRITON_INTERPRET in the child
    code = "import json, os; print('a warning'); print(json.dumps(os.environ.get('TRITON_INTERPRET')))"
    assert run_compiling("-c", code, timeout=60) is None
    with pytest.raises(RuntimeError, match=r"exit 3\):\nboom"):
        run_compiling("-c", "import sys; print('not json'); sys.stderr.write('boom'); sys.exit(3)", timeout=60)
