"""``python -m slowfast_trt.server`` (same as ``python -m slowfast_trt.serve``)."""

import sys

from .cli import main

sys.exit(main())
