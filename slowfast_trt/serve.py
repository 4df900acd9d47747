"""``python -m slowfast_trt.serve``: the OpenAI-compatible video chat server (see ``slowfast_trt.server.cli``)."""

import sys

from .server.cli import main

if __name__ == "__main__":
    sys.exit(main())
