"""slowfast_trt: Slow-Fast Video MLLM on NVIDIA GPUs through ONNX and TensorRT."""

__version__ = "0.1.0"
