"""``python -m slowfast_trt.run``: the command of :mod:`slowfast_trt.cli.run` (also ``slowfast-run``)."""

if __name__ == "__main__":
    import sys

    from slowfast_trt.cli.run import main

    sys.exit(main())
