"""Encoder input assembly (kernels/encoder_input.py); the references run the official encoder order."""
import pytest


@pytest.mark.bench_op("encoder_input")
def test_encoder_input(op_result):
    assert op_result["median_ms"] > 0
