"""``python benchmarks/kernel_resources.py`` or ``python -m benchmarks.kernel_resources``: runs
``python -m tools.kernel_resources`` (the same arguments) with the repository root on ``PYTHONPATH``,
in a process of its own (the tool turns the Triton interpreter off for the process that imports it).
"""

import os
import sys

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    os.execve(sys.executable, [sys.executable, "-m", "tools.kernel_resources", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": path})
