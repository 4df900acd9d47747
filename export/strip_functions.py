"""Remove the model-local ONNX function of our custom op before a TensorRT build.

The exported graphs carry each ``SlowFastCrossAttention`` node twice over: as a custom node
(domain ``slowfast_trt``) that TensorRT maps to the registered plugin, and as a model-local
``FunctionProto`` of the same name and domain that decomposes it into standard ops so that
ONNX Runtime can run the file. TensorRT 10.3's ONNX parser prefers a model-local function
over a registered plugin (onnx-tensorrt started preferring the plugin only in 10.7), so the
TensorRT build step drops the function and keeps the custom nodes, attributes and all.

Weights are never read: the model is loaded with ``load_external_data=False`` and the
stripped graph is written next to the original, pointing at the same external data file.

    python -m slowfast_trt.export.strip_functions MODEL.onnx [OUT.onnx]
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import ModelProto

from slowfast_trt.ops.cross_attention.contract import op_schema

DEFAULT_DOMAIN = "slowfast_trt"
STRIPPED_SUFFIX = ".trt.onnx"


def strip_local_functions(model: ModelProto, domain: str = DEFAULT_DOMAIN) -> ModelProto:
    """A copy of ``model`` without the local functions of ``domain``; every node is kept.

    The opset import of ``domain`` stays, so the custom nodes still check. Load the model with
    ``load_external_data=False`` first: the copy then holds no weight bytes.
    """
    stripped = ModelProto()
    stripped.CopyFrom(model)
    kept = [f for f in stripped.functions if f.domain != domain]
    del stripped.functions[:]
    stripped.functions.extend(kept)
    if _uses_domain(stripped.graph, domain) and not any(o.domain == domain for o in stripped.opset_import):
        stripped.opset_import.add(domain=domain, version=_op_version(domain))
    return stripped


def _op_version(domain: str) -> int:
    schema = op_schema()
    return int(schema["op_version"]) if schema["domain"] == domain else 1


def _uses_domain(graph: onnx.GraphProto, domain: str) -> bool:
    for node in graph.node:
        if node.domain == domain:
            return True
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            if any(_uses_domain(g, domain) for g in subgraphs):
                return True
    return False


def _external_locations(model: ModelProto) -> set[str]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    locations = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return locations


def default_stripped_path(src: str | Path) -> Path:
    """``decoder.onnx`` -> ``decoder.trt.onnx`` in the same folder."""
    src = Path(src)
    stem = src.name[: -len(".onnx")] if src.name.endswith(".onnx") else src.name
    return src.with_name(stem + STRIPPED_SUFFIX)


def strip_file(src: str | Path, dst: str | Path | None = None, domain: str = DEFAULT_DOMAIN) -> Path:
    """Write ``src`` without the local functions of ``domain`` to ``dst`` (default ``*.trt.onnx``).

    External data stays where it is: ``dst`` must be in the folder of ``src`` when the model has
    external data (its locations are relative to the model file, and ONNX refuses locations
    that leave the model's folder). Returns ``dst``.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else default_stripped_path(src)
    if not src.is_file():
        raise ValueError(f"{src}: ONNX file not found")
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the stripped model must not overwrite its source")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"{src}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    locations = _external_locations(model)
    if locations and dst.parent.resolve() != src.parent.resolve():
        raise ValueError(
            f"{dst}: must be in {src.parent} next to the external data it points at ({', '.join(sorted(locations))})"
        )
    # Serialize by hand: onnx.save would try to (re)write external data tensors.
    dst.write_bytes(strip_local_functions(model, domain).SerializeToString())
    return dst
