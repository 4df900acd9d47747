"""``manifest.json`` of an export folder: what was exported, from what, and how to check it.

Written by ``python -m slowfast_trt.export``; read by the runtime, which calls
:func:`check_manifest` before it loads anything.

| key                | meaning                                                                    |
|--------------------|----------------------------------------------------------------------------|
| format             | manifest layout version (``FORMAT``)                                       |
| package_version    | ``slowfast_trt.__version__`` that exported the folder                      |
| family             | the model family (``slowfast``; absent in older exports: ``slowfast``)     |
| source             | checkpoint as given, resolved folder, ``hash`` and ``hash_method``         |
| config             | the parsed ``SlowFastConfig`` (dataclass fields) and derived values        |
| precision, dtype   | ``fp32``/``fp16``/``bf16`` and the torch dtype name of the weights         |
| frames             | the default frames sampled from a video file                              |
| max_frames         | the graphs serve every video of 1..max_frames frames (``frame_range``)    |
| max_seq_len        | the KV-cache length the graphs were exported for                          |
| vocab_rows         | embedding / LM-head rows kept (the tokenizer length, as upstream resizes)  |
| visual_tokens      | slow and fast tokens for ``frames`` (per frame, fast frames), and the      |
|                    | largest over the range (``max_slow``, ``max_fast``)                        |
| subgraphs          | per graph: ONNX file, inputs and outputs (name, shape, dtype)              |
| custom_op          | name, domain, op_version of ``ops/cross_attention/contract.json``         |
| layouts            | KV cache and slow K/V layouts, shapes and counts                           |
| backend            | ``tensorrt`` or ``onnxruntime``; ``engines`` (TensorRT) and ``trt_lint``   |
| files              | size in bytes of every file in the folder (manifest excluded)              |

The checkpoint hash is sha256 over ``config.json``, the shard index if any, and for each
weight file its name, size and safetensors header (the JSON table of tensor names, dtypes,
shapes and byte offsets). Hashing all 16 GB of a 7B checkpoint takes minutes; the header
pins every tensor's name, dtype, shape and position, and the size pins the file length, so
what it misses is an in-place rewrite of weight bytes that keeps all of those. ``.bin``
checkpoints (no header) hash their name, size, and first and last MiB.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from slowfast_trt.checkpoint_files import safetensors_header_bytes
from slowfast_trt.export.rebuild import reexport
from slowfast_trt.ops.cross_attention.contract import op_schema

MANIFEST_NAME = "manifest.json"
FORMAT = 3  # 2: decoders take past_length (static-shape decode steps); 3: every frame count 1..max_frames
_FORMAT_CHANGES = {3: "one export now serves every frame count from 1 to --max-frames"}
HASH_METHOD = (
    "sha256 over config.json, model.safetensors.index.json if present, and per weight file: name, size, "
    "safetensors header (.bin: first and last MiB)"
)
_REQUIRED = (
    "format", "package_version", "source", "precision", "frames", "max_seq_len", "subgraphs", "custom_op", "backend",
)
_REBUILD = reexport()


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    return files or sorted(directory.glob("pytorch_model*.bin"))


def _bin_sample(path: Path, chunk: int = 1 << 20) -> bytes:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(chunk)
        handle.seek(max(size - chunk, 0))
        return head + handle.read(chunk)


def checkpoint_fingerprint(directory: str | Path) -> str:
    """``sha256:<hex>`` of a checkpoint folder (method in the module docstring)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        if (directory / name).is_file():
            digest.update(name.encode() + b"\0" + (directory / name).read_bytes())
    files = _weight_files(directory)
    if not files:
        raise ValueError(f"{directory}: no weight files to fingerprint")
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}\0{size}\0".encode())
        digest.update(safetensors_header_bytes(f) if f.suffix == ".safetensors" else _bin_sample(f))
    return "sha256:" + digest.hexdigest()


def tensor_entry(spec: Any) -> dict:
    """A ``TensorSpec`` (name, shape of ints and dim names, dtype) as JSON."""
    return {"name": spec.name, "shape": [d if isinstance(d, str) else int(d) for d in spec.shape], "dtype": str(spec.dtype)}


def subgraph_entry(spec: Any) -> dict:
    """A ``SubgraphSpec`` as JSON (``dims``: [name, min, max] of each dynamic dim, when given)."""
    entry = {
        "file": str(spec.file),
        "inputs": [tensor_entry(t) for t in spec.inputs],
        "outputs": [tensor_entry(t) for t in spec.outputs],
    }
    if getattr(spec, "dims", None):
        entry["dims"] = [[str(name), int(low), int(high)] for name, low, high in spec.dims]
    if getattr(spec, "data_file", ""):
        entry["data_file"] = str(spec.data_file)
    return entry


def folder_files(directory: Path, skip: tuple[str, ...] = (MANIFEST_NAME,)) -> dict[str, int]:
    """Relative path -> size of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def write_manifest(directory: str | Path, manifest: Mapping[str, Any]) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_manifest(directory: str | Path) -> dict:
    """The manifest of an export folder; ValueError naming the folder if absent or unreadable."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"{directory}: not an export folder (no {MANIFEST_NAME}); {_REBUILD}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt manifest ({exc}); {_REBUILD}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: corrupt manifest (not a JSON object); {_REBUILD}")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ValueError(f"{path}: manifest lacks {', '.join(missing)}; {_REBUILD}")
    return manifest


def check_manifest(manifest: Mapping[str, Any], expected_version: str, ckpt_hash: str | None = None) -> None:
    """Raise ValueError with a rebuild hint if the export does not match this package.

    Checked: the manifest format, the package version that exported it (graphs and runtime
    change together), the custom-op version against ``contract.json`` (the plugin
    is built from it), and, when ``ckpt_hash`` is given, the source checkpoint's hash.
    """
    if manifest.get("format") != FORMAT:
        why = _FORMAT_CHANGES.get(FORMAT, "") if isinstance(manifest.get("format"), int) and manifest["format"] < FORMAT else ""
        raise ValueError(
            f"export manifest format {manifest.get('format')!r}, this package reads format {FORMAT}"
            f"{f' ({why})' if why else ''}; {_REBUILD}"
        )
    exported = manifest.get("package_version")
    if exported != expected_version:
        raise ValueError(
            f"export made by slowfast_trt {exported}, this is slowfast_trt {expected_version}; {_REBUILD}"
        )
    contract = op_schema()
    op = manifest.get("custom_op") or {}
    keys = ("name", "domain", "op_version")
    if tuple(op.get(k) for k in keys) != tuple(contract[k] for k in keys):
        raise ValueError(
            f"export uses custom op {op.get('domain')}::{op.get('name')} v{op.get('op_version')}, "
            f"this package has {contract['domain']}::{contract['name']} v{contract['op_version']}; {_REBUILD}"
        )
    for key in ("frames", "max_frames", "max_seq_len", "vocab_rows"):
        value = manifest.get(key)  # read as int() by the runtime: a string would fail without a name
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"manifest.json: key '{key}' must be a positive integer, got {value!r}; {_REBUILD}")
    if ckpt_hash is not None:
        recorded = (manifest.get("source") or {}).get("hash")
        if recorded != ckpt_hash:
            raise ValueError(
                f"export made from checkpoint {recorded}, the checkpoint given is {ckpt_hash}; {_REBUILD}"
            )
