"""The slow-token cross-attention as a PyTorch custom op, and its ONNX translation.

``torch.ops.slowfast_trt.cross_attention`` runs the compiled CUDA kernel (the TensorRT plugin's
code, :mod:`.kernel`) for CUDA tensors it supports and the eager math
(:func:`slowfast_trt.ops.cross_attention.eager.cross_attention_eager`) otherwise
(:func:`implementation` says which), has a fake (meta) kernel for
tracing, and a TorchScript-exporter symbolic that emits ONE node of the contract
(``contract.json``: ``slowfast_trt::SlowFastCrossAttention`` with every attribute)
per call. ONNX Runtime runs that node through the model-local ONNX function that
:mod:`slowfast_trt.export.onnx_function` adds after export; TensorRT runs it through the plugin.

| input         | shape                           | dtype |
|---------------|---------------------------------|-------|
| query         | (R, H, D)                       | T     |
| slow_key      | (B, Hkv, Ns, D)                 | T     |
| slow_value    | (B, Hkv, Ns, D)                 | T     |
| slow_lengths  | (B,)                            | int32 |
| row_offsets   | (B + 1,)                        | int32 |
| residual      | (R, H * D), optional            | T     |
| gate          | (R, 1), optional                | T     |
| -> output     | (R, H * D)                      | T     |

We use the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): the dynamo
exporter needs onnxscript, which is not a dependency of this package, and the TorchScript
path with ``register_custom_op_symbolic`` turns the op into exactly one node reliably.
"""

from __future__ import annotations

from typing import Optional

import torch

from slowfast_trt.ops.cross_attention import kernel
from slowfast_trt.ops.cross_attention.eager import cross_attention_eager
from slowfast_trt.ops.cross_attention.contract import op_schema

OP_QUALNAME = "slowfast_trt::cross_attention"


def implementation(query: torch.Tensor, slow_key: torch.Tensor, slow_value: torch.Tensor,
                   residual: torch.Tensor | None = None, gate: torch.Tensor | None = None) -> str:
    """``"kernel"`` when :func:`cross_attention` runs the compiled CUDA kernel for these inputs:
    CUDA tensors of one float dtype the kernel has, a head dim it was built for, at least one
    row, and the extension built; else ``"eager"`` (CPU, or an unsupported shape or build)."""
    if not (query.is_cuda and slow_key.is_cuda) or query.dim() != 3 or query.shape[0] == 0:
        return "eager"
    dtypes = {t.dtype for t in (query, slow_key, slow_value, residual, gate) if t is not None}
    if len(dtypes) != 1 or query.dtype not in kernel.SUPPORTED_DTYPES:
        return "eager"
    if query.shape[2] not in kernel.SUPPORTED_HEAD_DIMS or (residual is None) != (gate is None):
        return "eager"
    return "kernel" if kernel.is_available() else "eager"


def _dense(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` as the kernel reads it: contiguous and 16-byte aligned (a copy only when it is not)."""
    if t is None or (t.is_contiguous() and t.data_ptr() % 16 == 0):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _run_kernel(query, slow_key, slow_value, slow_lengths, row_offsets, residual, gate, scale) -> torch.Tensor:
    ints = [t.to(query.device, torch.int32).contiguous() for t in (slow_lengths, row_offsets)]  # no-ops in the runtime
    return kernel.cross_attention(
        _dense(query), _dense(slow_key), _dense(slow_value), *ints, _dense(residual), _dense(gate),
        num_heads=int(query.shape[1]), num_kv_heads=int(slow_key.shape[1]),
        scale=query.shape[2] ** -0.5 if scale is None else float(scale),
    )


@torch.library.custom_op(OP_QUALNAME, mutates_args=())
def cross_attention(
    query: torch.Tensor,
    slow_key: torch.Tensor,
    slow_value: torch.Tensor,
    slow_lengths: torch.Tensor,
    row_offsets: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Context of each query row over its sequence's valid slow tokens (see the module table).

    With ``residual`` and ``gate`` it returns ``residual + gate * ctx`` (the contract's
    ``fuse_gate = 1``), otherwise ``ctx``. ``scale`` defaults to ``head_dim ** -0.5``. Runs the
    CUDA kernel where :func:`implementation` says so (no host sync: CUDA-graph safe), else eager.
    """
    if implementation(query, slow_key, slow_value, residual, gate) == "kernel":
        return _run_kernel(query, slow_key, slow_value, slow_lengths, row_offsets, residual, gate, scale)
    return cross_attention_eager(query, slow_key, slow_value, slow_lengths, row_offsets, residual, gate, scale)


@cross_attention.register_fake
def _cross_attention_fake(query, slow_key, slow_value, slow_lengths, row_offsets, residual=None, gate=None, scale=None):
    rows, heads, dim = query.shape
    return query.new_empty((rows, heads * dim))


def _traced_dim(g, index: int, axis: int, what: str) -> int:
    """Size of ``axis`` of the op's ``index``-th input as recorded by the tracer.

    ONNX shape inference often loses these (the query comes out of a Reshape with a computed
    shape), but the traced TorchScript node keeps concrete sizes. Only model constants (heads,
    kv heads, head_dim) are read this way, never a dynamic axis.
    """
    sizes = g.original_node.inputsAt(index).type().varyingSizes()
    if sizes is None or len(sizes) <= axis or sizes[axis] is None:
        raise ValueError(f"ONNX export of {OP_QUALNAME}: {what} (input {index}, axis {axis}) is unknown at export time")
    return int(sizes[axis])


def _symbolic(g, query, slow_key, slow_value, slow_lengths, row_offsets, residual, gate, scale):
    """TorchScript symbolic: one ``slowfast_trt::SlowFastCrossAttention`` node, contract order."""
    from torch.onnx import symbolic_helper

    schema = op_schema()
    heads, dim = _traced_dim(g, 0, 1, "query heads"), _traced_dim(g, 0, 2, "head_dim")
    kv_heads = _traced_dim(g, 1, 1, "slow_key kv heads")
    if symbolic_helper._is_none(scale):
        scale_value = dim**-0.5
    else:
        scale_value = symbolic_helper._maybe_get_const(scale, "f")
        if symbolic_helper._is_value(scale_value):
            raise ValueError(f"ONNX export of {OP_QUALNAME}: scale must be a Python float, not a tensor")
    fuse = not (symbolic_helper._is_none(residual) or symbolic_helper._is_none(gate))
    inputs = [query, slow_key, slow_value, slow_lengths, row_offsets] + ([residual, gate] if fuse else [])
    out = g.op(
        f"{schema['domain']}::{schema['name']}",
        *inputs,
        num_heads_i=heads,
        num_kv_heads_i=kv_heads,
        head_dim_i=dim,
        scale_f=float(scale_value),
        fuse_gate_i=int(fuse),
        plugin_version_s=schema["plugin_version"],
        plugin_namespace_s=schema["plugin_namespace"],
    )
    out.setType(g.original_node.outputsAt(0).type().with_sizes([None, heads * dim]))
    return out


def register_onnx_symbolic(opset: int) -> None:
    """Register the TorchScript-exporter translation for ``opset`` (idempotent)."""
    torch.onnx.register_custom_op_symbolic(OP_QUALNAME, _symbolic, opset)


def custom_opsets() -> dict[str, int]:
    """The ``custom_opsets`` argument of ``torch.onnx.export``: our domain at the contract version."""
    schema = op_schema()
    return {schema["domain"]: int(schema["op_version"])}
