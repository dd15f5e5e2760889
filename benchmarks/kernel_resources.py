"""The compiled-resources report of every fused kernel: ``python -m benchmarks.kernel_resources``.

The work is in ``tools/kernel_resources.py`` (shared with ``tests/test_gpu_readiness.py``); this module
lets the report run from the benchmarks package, where the other reports are. Run it from the
repository root (``-m`` puts the root on ``sys.path``, for ``tools``); it imports the tool only when run,
since the tool turns the Triton interpreter off for the process that imports it.
"""

import sys

if __name__ == "__main__":
    from tools.kernel_resources import main

    sys.exit(main())
