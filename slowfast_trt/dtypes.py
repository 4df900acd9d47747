"""The one table of dtype names and export precisions.

Every name a dtype goes by maps here: our specs and manifests (``"float16"``), ONNX Runtime type
strings (``"tensor(float16)"``), TensorRT enum names (``"HALF"``), safetensors codes (``"F16"``),
ONNX ``TensorProto`` codes, and the export precisions of the CLI (``fp16``, ``int4-awq``).

| precision | ONNX graph dtype | decoder weights            | TensorRT build       |
|-----------|------------------|----------------------------|----------------------|
| fp32      | float32          | float32                    | fp32                 |
| fp16      | float16          | float16                    | strongly typed fp16  |
| bf16      | float32          | float32                    | BF16 flag            |
| int4-awq  | float16 (ORT: 32)| INT4 blockwise + fp16 scale| strongly typed       |
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "MODEL_DTYPES",
    "PRECISIONS",
    "dtype_name",
    "graph_dtype",
    "normalize_precision",
    "numpy_dtype",
    "onnx_type",
    "parse_model_dtype",
    "safetensors_dtype",
    "torch_dtype",
]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
    "fp16": "float16", "int": "int32", "long": "int64",
    # safetensors header codes
    "f64": "float64", "f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "i16": "int16",
    "i8": "int8", "u8": "uint8",
}
# What a model's weights and activations may be loaded as (``--dtype``).
MODEL_DTYPES = ("float32", "float16", "bfloat16")
# Export precisions -> the dtype of the exported ONNX graphs.
PRECISIONS: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "float32", "int4-awq": "float16"}
_PRECISION_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int4_awq": "int4-awq"}


def torch_dtype(name: str | torch.dtype | np.dtype) -> torch.dtype:
    """``"float16"``, ``"tensor(float16)"``, ``"HALF"``, ``"F16"``, ``np.float16`` ... -> ``torch.float16``.

    An unknown name is a ``ValueError`` naming it and the supported ones.
    """
    if isinstance(name, torch.dtype):
        return name
    if isinstance(name, (np.dtype, type)):
        return torch.from_numpy(np.zeros(0, dtype=name)).dtype
    key = str(name).strip().lower()
    if key.startswith("tensor(") and key.endswith(")"):
        key = key[len("tensor(") : -1]
    if key.startswith("datatype."):
        key = key[len("datatype.") :]
    key = _ALIASES.get(key, key)
    if key not in _DTYPES:
        raise ValueError(f"unsupported tensor dtype {name!r} (supported: {', '.join(_DTYPES)})")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported tensor dtype {dtype}")


def numpy_dtype(dtype: str | torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype (bfloat16 has none: a ``ValueError``)."""
    dtype = torch_dtype(dtype)
    if dtype == torch.bfloat16:
        raise ValueError("bfloat16 has no numpy dtype; bind it by pointer instead")
    return torch.zeros(0, dtype=dtype).numpy().dtype


def safetensors_dtype(code: str) -> torch.dtype | None:
    """A safetensors header code (``"BF16"``) -> torch dtype, or None when torch has none."""
    try:
        return torch_dtype(code)
    except ValueError:
        return None


def onnx_type(dtype: torch.dtype) -> int:
    """The ``onnx.TensorProto`` data type of a torch dtype."""
    from onnx import TensorProto, helper

    if dtype == torch.bfloat16:
        return TensorProto.BFLOAT16
    return helper.np_dtype_to_tensor_dtype(numpy_dtype(dtype))


def parse_model_dtype(name: str | torch.dtype) -> torch.dtype:
    """``--dtype`` of a model: one of :data:`MODEL_DTYPES` (a ``ValueError`` naming them otherwise)."""
    if isinstance(name, torch.dtype):
        if dtype_name(name) not in MODEL_DTYPES:
            raise ValueError(f"unsupported dtype {name} (supported: {', '.join(MODEL_DTYPES)})")
        return name
    if name not in MODEL_DTYPES:
        raise ValueError(f"unsupported dtype {name!r} (supported: {', '.join(MODEL_DTYPES)})")
    return _DTYPES[name]


def normalize_precision(precision: str) -> str:
    """``fp16``/``float16`` ... -> one of :data:`PRECISIONS`."""
    p = _PRECISION_ALIASES.get(precision, precision)
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return p


def graph_dtype(precision: str, backend: str = "tensorrt") -> str:
    """The dtype of the ONNX graphs exported for ``precision`` (and of the runtime's KV cache).

    INT4 for ONNX Runtime keeps float32 activations: its CPU kernels have no fast float16 path.
    """
    p = normalize_precision(precision)
    if p == "int4-awq" and backend == "onnxruntime":
        return "float32"
    return PRECISIONS[p]
