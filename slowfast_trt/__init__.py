"""slowfast_trt: Slow-Fast Video MLLM on NVIDIA GPUs through ONNX and TensorRT."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import slowfast_trt` stays light (no torch, no ONNX Runtime) until the runtime is used.
    if name == "SlowFastRuntime":
        from .runtime_api import SlowFastRuntime

        return SlowFastRuntime
    raise AttributeError(f"module 'slowfast_trt' has no attribute {name!r}")
