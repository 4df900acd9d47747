"""``slowfast-trt-lint FILE.onnx...``: the TensorRT 10.3 compatibility lint of ONNX graphs.

Exit 0 when every graph is clean, 1 when one has problems (each printed), 2 for a file that
cannot be read.
"""

from __future__ import annotations

import sys

from slowfast_trt.cli.errors import error_line
from slowfast_trt.export.trt_lint import lint_model


def main(argv: list[str] | None = None) -> int:
    files = sys.argv[1:] if argv is None else argv
    if not files or any(f.startswith("-") for f in files):
        print("usage: slowfast-trt-lint FILE.onnx...", file=sys.stderr)
        return 2
    status = 0
    for name in files:
        try:
            problems = lint_model(name)
        except (ValueError, OSError) as exc:
            print(error_line(exc), file=sys.stderr)
            return 2
        for problem in problems:
            print(f"{name}: {problem}")
        if not problems:
            print(f"{name}: ok")
        status = status or (1 if problems else 0)
    return status



if __name__ == "__main__":
    sys.exit(main())
