"""The decoder's masked tokens (kernels/masked_tokens.py): ``x [N, L+1, D] -> [N, M, D]``; grad x."""
import pytest


@pytest.mark.bench_op("masked_tokens")
def test_masked_tokens(op_result):
    assert op_result["median_ms"] > 0
