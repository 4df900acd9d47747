"""Model families in PyTorch (config, checkpoint names and loading, vision side, decoder), on the
shared Qwen2 layers of :mod:`slowfast_trt.models.qwen2`. :mod:`slowfast_trt.models.family` is the
interface, :mod:`slowfast_trt.models.registry` picks a checkpoint's family."""
