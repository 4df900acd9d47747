"""``python -m slowfast_trt.bench``: the command of :mod:`slowfast_trt.tools.bench` (also ``slowfast-bench``)."""

if __name__ == "__main__":
    import sys

    from slowfast_trt.tools.bench import main

    sys.exit(main())
