"""``python -m fastmae ...``: the ``fastmae`` command line."""

import sys

from fastmae.cli import main

sys.exit(main())
