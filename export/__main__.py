"""``python -m slowfast_trt.export``: see :mod:`slowfast_trt.cli.export`."""

import sys

from slowfast_trt.cli.export import main

sys.exit(main())
