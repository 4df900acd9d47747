"""``python -m slowfast_trt.export``: see :mod:`slowfast_trt.export.cli`."""

import sys

from .cli import main

sys.exit(main())
