"""What a command tells the user while it runs: progress lines on stdout, warnings on stderr."""

import sys


class Console:
    """``say`` prints a line on stdout, ``warn`` prints ``fastmae: warning: ...`` on stderr; both
    flush at once (a pipe would otherwise hold the first lines back) and both are silent when
    ``enabled`` is false (under torchrun, every rank but 0)."""

    def __init__(self, enabled=True):
        self.enabled = enabled

    def say(self, message):
        if self.enabled:
            print(message, flush=True)

    def warn(self, message):
        if self.enabled:
            print(f"fastmae: warning: {message}", file=sys.stderr, flush=True)


def count(n, noun, plural=None):
    """``n`` and ``noun``, in the plural unless ``n`` is 1: ``count(1, 'epoch')`` is ``1 epoch``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
