"""slowfast_trt: Slow-Fast Video MLLM on NVIDIA GPUs through ONNX and TensorRT."""

from slowfast_trt._version import __version__

__all__ = ["SlowFastRuntime", "__version__"]


def __getattr__(name: str):
    # Lazy: `import slowfast_trt` stays light (no torch, no ONNX Runtime) until the runtime is used.
    if name == "SlowFastRuntime":
        from slowfast_trt.runtime.slowfast_runtime import SlowFastRuntime

        return SlowFastRuntime
    raise AttributeError(f"module 'slowfast_trt' has no attribute {name!r}")
