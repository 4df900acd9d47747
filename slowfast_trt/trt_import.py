"""The one place that imports ``tensorrt``: lazily, so the package works without it, and with
a one-line error that says what to do instead (the advice differs by caller)."""

from __future__ import annotations


def tensorrt_import_error() -> str | None:
    """None when ``import tensorrt`` works, else why not."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        return f"{type(exc).__name__}: {exc}"
    return None


def import_tensorrt(advice: str, error: type[Exception] = ValueError):
    """The ``tensorrt`` module, or ``error`` naming why the import failed followed by ``advice``."""
    why = tensorrt_import_error()
    if why is not None:
        raise error(f"TensorRT is not available (import tensorrt failed: {why}); {advice}") from None
    import tensorrt

    return tensorrt
