"""``--precision int4-awq``: AWQ scales folded into the model, the ONNX export, then INT4 weights.

:func:`export_int4_awq`: AWQ scales (:mod:`slowfast_trt.export.awq`) folded into the model,
:func:`~slowfast_trt.export.subgraphs.export_all`, then
:func:`~slowfast_trt.export.quantize_int4.quantize_decoder_onnx` on ``decoder.onnx`` and
``decoder_nocross.onnx`` (which share one data file, rewritten once with 4-bit weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

from slowfast_trt.export.awq import apply_awq
from slowfast_trt.export.quantize_int4 import DEFAULT_BLOCK, REPORT_FILE, default_selector, quantize_decoder_onnx
from slowfast_trt.export.subgraphs import export_all
from slowfast_trt.models.slowfast import specs as S


def export_int4_awq(
    model,
    out_dir: str | Path,
    frames: int,
    max_seq_len: int,
    *,
    tokenizer=None,
    calibration: Iterable[str] | Iterable[Sequence[int]] | None = None,
    activation_precision: str = "float16",
    block: int = DEFAULT_BLOCK,
    method: str = "awq",
    include_lm_head: bool = False,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, S.SubgraphSpec]:
    """Export ``model`` with an INT4 weight-only (AWQ) decoder into ``out_dir``.

    1. AWQ (``method="awq"``): per-input-channel scales searched on ``calibration`` (prompt
       strings, tokenized with ``tokenizer``, or token-id lists; default: the built-in prompts
       when a tokenizer is given) and folded into the RMSNorm weights / ``up_proj`` rows. With
       ``method="rtn"``, or without calibration data, plain round-to-nearest.
    2. :func:`~.subgraphs.export_all` in ``activation_precision`` (float16 for TensorRT and
       Jetson; float32 for accuracy checks, or a bf16 engine).
    3. :func:`quantize_decoder_onnx`; vision, pooler and slow K/V stay in ``activation_precision``.

    Returns the specs of :func:`~.subgraphs.export_all`; ``quantization.json`` records the
    method, the AWQ scales' search results and every weight's block. ``model`` is modified
    in place (folded scales, converted dtype).
    """
    out_dir = Path(out_dir)
    if method not in ("awq", "rtn"):
        raise ValueError(f"method must be 'awq' or 'rtn', got {method!r}")
    awq = {"method": "rtn", "reason": "method='rtn'"}
    if method == "awq":
        progress("AWQ: searching per-channel scales on the calibration prompts")
        awq = apply_awq(model, tokenizer=tokenizer, calibration=calibration, block=block)
    progress(f"exporting ONNX subgraphs ({activation_precision} activations)")
    specs = export_all(model, out_dir, activation_precision, frames, max_seq_len, progress=progress)
    progress("rewriting the decoder weights to INT4")
    report = quantize_decoder_onnx(out_dir, block=block, select=default_selector(include_lm_head))
    payload = {"scheme": "int4 weight-only, symmetric, blockwise along the input dim", "awq": awq, **report.to_json()}
    (out_dir / REPORT_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return specs
