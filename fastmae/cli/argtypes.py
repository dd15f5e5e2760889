"""Argument types that reject out-of-range values at parse time (``argument --x: ...``)."""

import argparse
import math


def _number(kind, low, low_open, high=None):
    """An argparse ``type`` parsing ``kind`` within ``[low, high)`` (``(low, high)`` if ``low_open``)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}"
                                             f", got '{text}'") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value >= high):
            bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
        return value
    return parse


positive_int = _number(int, 0, low_open=True)
nonnegative_int = _number(int, 0, low_open=False)
positive_float = _number(float, 0.0, low_open=True)
nonnegative_float = _number(float, 0.0, low_open=False)
ratio = _number(float, 0.0, low_open=True, high=1.0)  # a mask ratio: some patches removed, some kept


def fraction(text):
    """A float in ``[0, 1]`` (the masking lesson allows masking nothing or everything)."""
    value = nonnegative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value
