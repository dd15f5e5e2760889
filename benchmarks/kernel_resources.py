"""The compiled-resources report of every fused kernel: ``python benchmarks/kernel_resources.py``.

The work is in ``tools/kernel_resources.py`` (shared with ``tests/test_gpu_readiness.py``); this file
lets the report run from the benchmarks folder, where the other reports are.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
    from tools.kernel_resources import main

    sys.exit(main())
