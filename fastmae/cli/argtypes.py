"""Argument types that reject out-of-range values at parse time (``argument --x: ...``).

Each error says what is expected in words (``must be a positive integer, got 0``), or as an
interval where both ends matter (``must be in [0, 1], got 1.2``).
"""

import argparse
import math


def _number(kind, expected, low, low_open, high=None, high_closed=False):
    """An argparse ``type`` parsing ``kind`` within ``[low, high)`` (``(low, ...`` if ``low_open``,
    ``..., high]`` if ``high_closed``); out of range, the error says ``must be {expected}``."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}"
                                             f", got '{text}'") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value > high if high_closed else value >= high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value
    return parse


positive_int = _number(int, "a positive integer", 0, low_open=True)
nonnegative_int = _number(int, "a non-negative integer", 0, low_open=False)
positive_float = _number(float, "a positive number", 0.0, low_open=True)
nonnegative_float = _number(float, "a non-negative number", 0.0, low_open=False)
# A mask ratio: some patches removed, some kept.
ratio = _number(float, "in (0, 1)", 0.0, low_open=True, high=1.0)
# The masking lesson allows masking nothing or everything.
fraction = _number(float, "in [0, 1]", 0, low_open=False, high=1, high_closed=True)
# What numpy.random.seed accepts (torch accepts more).
seed = _number(int, "an integer in [0, 2**32)", 0, low_open=False, high=2**32)
