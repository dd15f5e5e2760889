"""The data benchmark (benchmarks/data_throughput.py) on a small generated set, as CI runs it.

Eight photo-like 500x375 q90 JPEGs made here (fastmae.data.synthetic: no real photographs can be
fetched on CI), one pass: the figures are for the table's shape, not for reading (see NOTES.md for
the measured ones).
"""

from __future__ import annotations

import re

import pytest

import fastmae.data as fd

from . import data_throughput

LAST_LINE = re.compile(r"cpu cost per image: fastmae (\d+\.\d\d) ms, decode-only floor (\d+\.\d\d) ms, "
                       r"floor/fastmae (\d+\.\d\d)")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    fd.write_photo_like_jpegs(str(folder), 8)
    return str(folder)


def test_data_throughput(benchmark, photos, capsys):
    rc = benchmark.pedantic(data_throughput.main, args=(["--data", photos, "--size", "224", "--passes", "1"],),
                            rounds=1, iterations=1)
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[2].startswith("| path |") and len([line for line in out if line.startswith("| (")]) == 5
    match = LAST_LINE.fullmatch(out[-1])
    assert match, out[-1]
    fastmae_ms, floor_ms, ratio = map(float, match.groups())
    assert fastmae_ms > 0 and floor_ms > 0 and abs(ratio - floor_ms / fastmae_ms) <= 0.01 + 0.01 * ratio
    benchmark.extra_info.update(fastmae_ms=fastmae_ms, floor_ms=floor_ms, floor_over_fastmae=ratio,
                                images=8, size=224, table="\n".join(out))
