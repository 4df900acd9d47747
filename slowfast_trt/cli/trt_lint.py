"""``slowfast-trt-lint FILE.onnx...``: the TensorRT 10.3 compatibility lint of ONNX graphs.

Exit 0 when every graph is clean, 1 when one has problems (each printed), 2 for a file that
cannot be read.
"""

from __future__ import annotations

import sys

from slowfast_trt.cli.errors import run_cli
from slowfast_trt.export.trt_lint import lint_model


def main(argv: list[str] | None = None) -> int:
    files = sys.argv[1:] if argv is None else argv
    if not files or any(f.startswith("-") for f in files):
        print("usage: slowfast-trt-lint FILE.onnx...", file=sys.stderr)
        return 2
    return run_cli(lambda: _lint(files))


def _lint(files: list[str]) -> int:
    status = 0
    for name in files:
        problems = lint_model(name)  # an unreadable file: one error line, exit 2 (run_cli)
        for problem in problems:
            print(f"{name}: {problem}")
        if not problems:
            print(f"{name}: ok")
        status = status or (1 if problems else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
