"""What a command tells the user while it runs: progress lines on stdout, warnings on stderr."""

import re
import sys
import time


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


# The training loop's progress line starts "epoch [E] [ i/I]" (epochs from 0, as log.txt).
_PROGRESS = re.compile(r"^epoch \[(\d+)\] \[\s*(\d+)/(\d+)\]")


def duration(seconds):
    """``seconds`` as ``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class RunProgress:
    """A ``Console`` for the training loop that makes its progress lines say where the run is:
    ``epoch [E] [i/I]`` becomes ``epoch E+1/N [i/I]`` and the line ends with the run's ETA (the
    remaining iterations at the mean time per iteration so far). Other lines pass unchanged."""

    def __init__(self, console, epochs, start_epoch, iters):
        self.console, self.epochs, self.start_epoch, self.iters = console, epochs, start_epoch, iters
        self.t0 = time.perf_counter()

    def eta(self, epoch, done):
        """Seconds left after ``done`` iterations of ``epoch`` (counted from 0)."""
        finished = (epoch - self.start_epoch) * self.iters + done
        left = (self.epochs - epoch) * self.iters - done
        return (time.perf_counter() - self.t0) / max(finished, 1) * left

    def say(self, message):
        match = _PROGRESS.match(message)
        if match:
            epoch, done, iters = (int(g) for g in match.groups())
            message = (f"epoch {epoch + 1}/{self.epochs} [{done:>{len(str(iters))}}/{iters}]"
                       f"{message[match.end():]}, ETA {duration(self.eta(epoch, done))}")
        self.console.say(message)

    def warn(self, message):
        self.console.warn(message)
