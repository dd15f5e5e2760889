"""Decoder input assembly (kernels/decoder_input.py): mask tokens, unshuffle, + positions; grads x, mask_token."""
import pytest


@pytest.mark.bench_op("decoder_input")
def test_decoder_input(op_result):
    assert op_result["median_ms"] > 0
