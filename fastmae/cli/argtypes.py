"""Argument types that reject out-of-range values at parse time (``argument --x: ...``)."""

import argparse
import math


def _number(kind, low, low_open, high=None, high_closed=False):
    """An argparse ``type`` parsing ``kind`` within ``[low, high)`` (``(low, ...`` if ``low_open``,
    ``..., high]`` if ``high_closed``)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}"
                                             f", got '{text}'") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value > high if high_closed else value >= high)
        if not math.isfinite(value) or too_low or too_high:
            bounds = (f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}"
                      f"{']' if high_closed else ')'}")
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
        return value
    return parse


positive_int = _number(int, 0, low_open=True)
nonnegative_int = _number(int, 0, low_open=False)
positive_float = _number(float, 0.0, low_open=True)
nonnegative_float = _number(float, 0.0, low_open=False)
ratio = _number(float, 0.0, low_open=True, high=1.0)  # a mask ratio: some patches removed, some kept
# The masking lesson allows masking nothing or everything.
fraction = _number(float, 0, low_open=False, high=1, high_closed=True)
# What numpy.random.seed accepts (torch accepts more).
seed = _number(int, 0, low_open=False, high=2**32)
