"""The compiled-resources report of every fused kernel: ``python benchmarks/kernel_resources.py`` or
``python -m benchmarks.kernel_resources`` (the same arguments as ``python -m tools.kernel_resources``).

The work is in ``tools/kernel_resources.py`` (shared with ``tests/test_gpu_readiness.py``); this file
lets the report run from the benchmarks folder, where the other reports are. Run as a file, it starts
``python -m tools.kernel_resources`` with the repository root on ``PYTHONPATH``; it imports the tool only
when run, since the tool turns the Triton interpreter off for the process that imports it.
"""

import os
import sys

if __name__ == "__main__":
    if __package__:  # python -m benchmarks.kernel_resources: the root is on sys.path already
        from tools.kernel_resources import main

        sys.exit(main())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    os.execve(sys.executable, [sys.executable, "-m", "tools.kernel_resources", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": path})
