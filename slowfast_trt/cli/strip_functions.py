"""``python -m slowfast_trt.cli.strip_functions MODEL.onnx [OUT.onnx]``: a copy of a graph without
the custom op's local ONNX function (what TensorRT parses)."""

from __future__ import annotations

import sys

from slowfast_trt.cli.errors import run_cli
from slowfast_trt.export.strip_functions import strip_file


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or args[0].startswith("-"):
        print("usage: python -m slowfast_trt.cli.strip_functions MODEL.onnx [OUT.onnx]", file=sys.stderr)
        return 2
    return run_cli(lambda: print(strip_file(args[0], args[1] if len(args) == 2 else None)))



if __name__ == "__main__":
    sys.exit(main())
