"""patchify, unpatchify (each the other's backward) and patchify_gather (visible patches only): kernels/patchify.py."""
import pytest


@pytest.mark.bench_op("patchify")
def test_patchify(op_result):
    assert op_result["median_ms"] > 0


@pytest.mark.bench_op("unpatchify")
def test_unpatchify(op_result):
    assert op_result["median_ms"] > 0


@pytest.mark.bench_op("patchify_gather")
def test_patchify_gather(op_result):
    assert op_result["median_ms"] > 0
