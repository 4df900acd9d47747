"""The one loader of the TensorRT plugin library: once per process.

TensorRT registers a library's plugin creators when it loads the library, and a second
``load_library`` of it in the same process fails ("already registered"). The engine build
(``export/trt_build.py``) and the runtime (``runtime/trt_engine.py``) both need the plugin, and
``slowfast-export --backend tensorrt`` runs both in one process, so both call
:func:`load_plugin_library`, which loads the library at most once. A creator of the contract's
name, version and namespace that is already registered (the library loaded by other code, e.g.
``trtexec --dynamicPlugins``) counts as loaded.
"""

from __future__ import annotations

import threading
from pathlib import Path

from slowfast_trt.ops.cross_attention.contract import op_schema
from slowfast_trt.ops.cross_attention.kernel import plugin_library_path

__all__ = ["load_plugin_library", "loaded_plugin_libraries"]

_LOADED: dict[str, object] = {}  # resolved path -> TensorRT's handle (None: registered by other code)
_LOCK = threading.Lock()


def _creator_registered(registry) -> bool:
    schema = op_schema()
    try:
        return registry.get_creator(schema["name"], schema["plugin_version"], schema["plugin_namespace"]) is not None
    except (AttributeError, TypeError, RuntimeError):  # an older registry API, or none registered
        return False


def load_plugin_library(trt, error: type[Exception] = ValueError, path: Path | None = None) -> Path:
    """Register the slow-token cross-attention plugin with ``trt`` (the imported ``tensorrt``
    module), unless this process did already; returns the library's path. ``error`` is the
    exception raised when the library was not built or TensorRT refuses it."""
    path = path or plugin_library_path()
    if path is None:
        raise error("the slowfast_trt TensorRT plugin library was not built; reinstall with CUDA and TensorRT present")
    key = str(Path(path).resolve())
    with _LOCK:
        if key in _LOADED:
            return Path(key)
        registry = trt.get_plugin_registry()
        if _creator_registered(registry):
            _LOADED[key] = None
            return Path(key)
        try:
            handle = registry.load_library(key)
        except Exception as exc:  # TensorRT's own exception types
            raise error(f"TensorRT could not load the plugin library {key} ({type(exc).__name__}: {exc})") from None
        if handle is None:
            raise error(f"TensorRT could not load the plugin library {key} (see TensorRT's log above)")
        _LOADED[key] = handle
    return Path(key)


def loaded_plugin_libraries() -> tuple[str, ...]:
    """Resolved paths this process has registered (for tests and diagnostics)."""
    with _LOCK:
        return tuple(_LOADED)
