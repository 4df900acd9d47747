"""Everything about the TensorRT engine build that is not a TensorRT call: profiles, flags,
timing cache, build log, engine manifest, compatibility check. :mod:`.trt_build` is the thin
layer that hands these to ``tensorrt``.

Engines per export folder (one per ONNX subgraph; the embedding table is not a graph):

| engine          | optimisation profiles (named dim: min / opt / max)                              |
|-----------------|---------------------------------------------------------------------------------|
| vision          | ``frames``: 1 / vision batch / vision batch (default batch: ``max_frames``)     |
| projector       | ``frames``: 1 / opt frames / max frames; ``tokens_per_frame``: video / video / image |
| fast_pool       | the same, and ``fast_frames`` 1 / of opt frames / most, ``fast_tokens_per_frame`` |
| slow_kv         | ``slow_tokens``: one frame's / opt frames' / the most (1..max_frames frames)    |
| decoder         | 0 ``prefill``: seq 1 / fast + 64 / R, past 0 / 0 / L-1, rows 0 / 64 / R;        |
|                 | 1 ``decode``: seq 1 / 1 / 1, past L / L / L (static), rows 0 / 1 / 1;           |
|                 | both: slow_tokens 1 (text-only prompts) / as slow_kv. One engine: weights once. |
|                 | (L = max_seq_len, R = ``max_prefill_rows``, default L)                          |
| decoder_nocross | the same two profiles without rows and slow tokens                              |

One set of engines serves every video of 1..``max_frames`` frames (the frame count is data:
the pooling matrices, see :mod:`slowfast_trt.models.slowfast.specs`); "opt frames" is the
export's default frame count, the shapes TensorRT tunes its kernels for. A stream encodes one
frame at a time (vision, projector and slow K/V at N = 1 frame, which every profile covers).

Profile 0 of the decoders covers every call with the past as the cache's valid prefix
(seq 1..R), so a runtime that never switches profiles still runs decode steps. Profile 1 is
the static decode step: one row over the whole preallocated cache (``past_length`` masks the
rows not yet written), the same shapes and addresses every step, so the runtime captures it
once in a CUDA graph and replays it (:mod:`slowfast_trt.runtime.decode_graph`), on a second
execution context with kernels tuned for one row. TensorRT sizes activation memory by each
profile's max shapes.

Precision (``fp32``, ``fp16``, ``bf16``, ``int4-awq``), the same for every subgraph except the
INT4 weights, which only the decoders have:

| precision | ONNX dtype | network        | builder flags      | decoder weights                     |
|-----------|------------|----------------|--------------------|-------------------------------------|
| fp32      | float32    | weakly typed   | TF32 cleared       | float32                             |
| fp16      | float16    | strongly typed | none               | float16                             |
| bf16      | float32    | weakly typed   | BF16               | TensorRT picks bf16 kernels         |
| int4-awq  | float16    | strongly typed | none               | INT4 + DequantizeLinear (block 128) |

Half-precision graphs are built strongly typed so the float32 islands the exporter writes
(RMSNorm, softmax, RoPE tables, the plugin's accumulation) stay float32: with a weakly typed
network and the FP16 flag TensorRT may run those casts' consumers in half precision.
bf16 has no ONNX export (see :data:`.specs.PRECISIONS`), so it is float32 ONNX + the BF16
flag. INT4 ``DequantizeLinear`` output is the scale's dtype (float16), which a strongly typed
network takes from the graph, so no INT4 builder flag is needed (TensorRT's ``kINT4`` flag is
for plugins with INT4 I/O).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from slowfast_trt.dtypes import normalize_precision
from slowfast_trt.export.rebuild import rebuild_engines
from slowfast_trt.models.slowfast import specs as S

ENGINE_MANIFEST_NAME = "engines.json"
BUILD_LOG_NAME = "trt_build_log.json"
ENGINE_FORMAT = 1
PROMPT_TEXT_TOKENS = 64  # text rows of a typical prompt (system + question + headers)
_REBUILD = rebuild_engines()


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: per input, its (min, opt, max) shapes."""

    name: str
    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]

    def to_json(self) -> dict:
        return {"name": self.name, "shapes": {n: {"min": list(a), "opt": list(b), "max": list(c)} for n, a, b, c in self.shapes}}


@dataclass(frozen=True)
class BuildSettings:
    """How one engine is built (all plain data; :mod:`.trt_build` maps names to ``tensorrt``)."""

    subgraph: str
    precision: str
    onnx_dtype: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]  # trt.BuilderFlag member names to set
    cleared_flags: tuple[str, ...]  # ... and to clear
    int4_weights: bool
    profiles: tuple[Profile, ...]
    workspace_bytes: int | None = None

    def to_json(self) -> dict:
        entry = asdict(self)
        entry["profiles"] = [p.to_json() for p in self.profiles]
        return entry


def precision_settings(subgraph: str, precision: str) -> dict[str, Any]:
    """ONNX dtype, network typing and builder flags of ``subgraph`` (module table)."""
    p = normalize_precision(precision)
    half = p in ("fp16", "int4-awq")
    return {
        "precision": p,
        "onnx_dtype": "float16" if half else "float32",
        "strongly_typed": half,
        "builder_flags": ("BF16",) if p == "bf16" else (),
        "cleared_flags": ("TF32",) if p == "fp32" else (),
        "int4_weights": p == "int4-awq" and subgraph in (S.DECODER, S.DECODER_NOCROSS),
    }


def profile_shapes(spec: S.SubgraphSpec, name: str, dims: Mapping[str, tuple[int, int, int]]) -> Profile:
    """A profile for every input of ``spec`` with a named dim, from per-dim (min, opt, max)."""
    shapes = []
    for t in spec.inputs:
        if not any(isinstance(d, str) for d in t.shape):
            continue
        missing = [d for d in t.shape if isinstance(d, str) and d not in dims]
        if missing:
            raise ValueError(f"{spec.name}: profile {name!r} has no range for dim {missing[0]!r} of input {t.name}")
        pick = [tuple(dims[d][k] if isinstance(d, str) else int(d) for d in t.shape) for k in range(3)]
        shapes.append((t.name, *pick))
    for dim, (low, opt, high) in dims.items():
        if not 0 <= low <= opt <= high:
            raise ValueError(f"{spec.name}: profile {name!r} dim {dim!r} needs 0 <= min <= opt <= max, got {low}/{opt}/{high}")
        if dim in {d for d, _, _ in spec.dims}:
            lo, hi = spec.dim_range(dim)
            if low < lo or high > hi:
                raise ValueError(f"{spec.name}: profile {name!r} dim {dim!r} {low}..{high} leaves the spec's {lo}..{hi}")
    return Profile(name, tuple(shapes))


def slow_token_counts(specs: Mapping[str, S.SubgraphSpec], frames: int, frame_counts=None) -> tuple[int, int, int]:
    """(min, opt, max) slow tokens: one frame's (a stream appends a frame at a time), ``frames``
    frames' (opt) and the most over ``frame_counts`` (default every count the export serves)."""
    video, image = specs[S.PROJECTOR].dim_range("tokens_per_frame")
    max_frames = specs[S.VISION].dim_range("frames")[1]
    counts = sorted(set(frame_counts or range(1, max_frames + 1)))
    if counts[0] < 1:
        raise ValueError(f"frame counts must be >= 1, got {counts}")

    def tokens(f: int) -> int:
        return image if f == 1 else f * video

    return min(video, image), tokens(min(max(frames, 1), counts[-1])), max(tokens(f) for f in counts)


def _frame_dims(specs: Mapping[str, S.SubgraphSpec], opt_frames: int) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of the projector's and fast_pool's dims, tuned for ``opt_frames`` frames
    (opt fast frames: ``min(opt frames, the most fast frames)``, exact for the released
    configs; opt only steers kernel tuning)."""
    pool = specs[S.FAST_POOL]
    max_frames = pool.dim_range("frames")[1]
    opt = min(max(opt_frames, 1), max_frames)
    video, image = pool.dim_range("tokens_per_frame")
    fast_video, fast_image = pool.dim_range("fast_tokens_per_frame")
    fast_frames = pool.dim_range("fast_frames")[1]
    return {
        "frames": (1, opt, max_frames),
        "tokens_per_frame": (video, image if opt == 1 else video, image),
        "fast_frames": (1, min(opt, fast_frames), fast_frames),
        "fast_tokens_per_frame": (fast_video, fast_image if opt == 1 else fast_video, fast_image),
    }


def decoder_profiles(spec: S.SubgraphSpec, max_seq_len: int, fast_tokens: int, slow: tuple[int, int, int],
                     max_prefill_rows: int | None = None) -> tuple[Profile, ...]:
    """The prefill and decode profiles of a decoder graph (module table); ``max_prefill_rows``
    caps the rows of one prefill call (default ``max_seq_len``)."""
    length = max_seq_len
    rows_max = min(max_prefill_rows or length, length)
    prompt = min(fast_tokens + PROMPT_TEXT_TOKENS, rows_max)
    names = {d for d, _, _ in spec.dims}
    prefill = {"seq": (1, prompt, rows_max), "past": (0, 0, length - 1)}
    # Static: the whole cache every step (past_length masks it), so a CUDA graph replays it.
    decode = {"seq": (1, 1, 1), "past": (length, length, length)}
    if "rows" in names:
        prefill["rows"] = (0, min(PROMPT_TEXT_TOKENS, rows_max), rows_max)
        decode["rows"] = (0, 1, 1)
    if "slow_tokens" in names:
        prefill["slow_tokens"] = decode["slow_tokens"] = slow
    return profile_shapes(spec, "prefill", prefill), profile_shapes(spec, "decode", decode)


def plan_engines(
    specs: Mapping[str, S.SubgraphSpec],
    precision: str,
    frames: int,
    max_seq_len: int,
    *,
    frame_counts=None,
    vision_batch: int | None = None,
    max_prefill_rows: int | None = None,
    include_nocross: bool = True,
    workspace_bytes: int | None = None,
    opt_frames: int | None = None,
) -> dict[str, BuildSettings]:
    """Build settings of every ONNX subgraph of an export for 1..``frames`` frames (module tables).

    TensorRT reserves each context's activation memory for its profiles' max shapes, so on
    Jetson bound them: ``vision_batch`` (most frames per vision call, the runtime's
    ``vision_batch``; default all ``frames``, e.g. 8 on Orin NX), ``frame_counts`` (the frame
    counts whose slow tokens the slow_kv and decoder engines must take; default every count
    1..``frames``), ``max_prefill_rows`` (rows of one prefill call; default ``max_seq_len``;
    fast tokens + 512 covers a video prompt) and ``include_nocross=False`` (no
    ``decoder_nocross`` engine: it would hold a second copy of the decoder weights; the runtime
    then runs every step on ``decoder``). ``opt_frames``: the frame count the kernels are tuned
    for (default ``frames``; the export's default frame count).
    """
    batch = vision_batch or frames
    if not 1 <= batch <= frames:
        raise ValueError(f"vision_batch must be in [1, {frames}] (the export's max frames), got {vision_batch}")
    opt = opt_frames or frames
    slow = slow_token_counts(specs, opt, frame_counts)
    frame_dims = _frame_dims(specs, opt)
    fast = min(frame_dims["fast_frames"][1] * frame_dims["fast_tokens_per_frame"][1], max_seq_len)
    plans = {}
    for name, spec in specs.items():
        if not spec.is_onnx or (name == S.DECODER_NOCROSS and not include_nocross):
            continue
        if name == S.VISION:
            profiles = (profile_shapes(spec, "default", {"frames": (1, min(batch, opt), batch)}),)
        elif name in (S.PROJECTOR, S.FAST_POOL):
            dims = {d: frame_dims[d] for d, _, _ in spec.dims}
            profiles = (profile_shapes(spec, "default", dims),)
        elif name == S.SLOW_KV:
            profiles = (profile_shapes(spec, "default", {"slow_tokens": slow}),)
        elif name in (S.DECODER, S.DECODER_NOCROSS):
            # min 1: a text-only prompt feeds one dummy slow token of valid length 0
            profiles = decoder_profiles(spec, max_seq_len, fast, (1, slow[1], slow[2]), max_prefill_rows)
        elif spec.dims:
            profiles = (profile_shapes(spec, "default", {d: (lo, hi, hi) for d, lo, hi in spec.dims}),)
        else:
            profiles = ()
        plans[name] = BuildSettings(subgraph=name, profiles=profiles, workspace_bytes=workspace_bytes,
                                    **precision_settings(name, precision))
    return plans


def prepare_onnx_for_parser(path: str | Path) -> Path:
    """The file TensorRT must parse for ``path``: a ``*.trt.onnx`` copy without the custom op's
    model-local function (:mod:`.strip_functions`; TensorRT 10.3 would inline the function
    instead of calling the plugin). A file that already has no local function is returned."""
    import onnx

    from slowfast_trt.export.strip_functions import STRIPPED_SUFFIX, strip_file

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    if not model.functions:
        return path
    if path.name.endswith(STRIPPED_SUFFIX):
        raise ValueError(f"{path}: named as stripped but still has local functions; re-run strip_functions on the source")
    return strip_file(path)


def timing_cache_path(cache_dir: str | Path, trt_version: str, compute_capability) -> Path:
    """One timing cache per TensorRT version and GPU architecture (caches do not transfer)."""
    return Path(cache_dir) / f"timing_trt{_version_tuple_text(trt_version)}_sm{_cc_text(compute_capability).replace('.', '')}.cache"


def build_log_entry(settings: BuildSettings, onnx_file: str, engine_file: str, seconds: float, engine_bytes: int,
                    messages: list[tuple[str, str]], timing_cache: str | None) -> dict:
    """One engine's record in ``trt_build_log.json``: inputs, settings, outcome, TensorRT's
    warnings and errors (``(severity, text)`` pairs, info and verbose dropped)."""
    return {
        "subgraph": settings.subgraph,
        "onnx_file": onnx_file,
        "engine_file": engine_file,
        "settings": settings.to_json(),
        "build_seconds": round(seconds, 3),
        "engine_bytes": engine_bytes,
        "timing_cache": timing_cache,
        "messages": [{"severity": s, "text": t} for s, t in messages if s in ("WARNING", "ERROR", "INTERNAL_ERROR")],
    }


def engine_manifest(trt_version: str, compute_capability, device_name: str, precision: str,
                    entries: Mapping[str, Mapping[str, Any]]) -> dict:
    """``engines.json``: what :func:`check_engine_compat` checks, and every engine's file and profiles."""
    return {
        "format": ENGINE_FORMAT,
        "tensorrt_version": trt_version,
        "compute_capability": _cc_text(compute_capability),
        "device_name": device_name,
        "precision": normalize_precision(precision),
        "engines": {name: dict(entry) for name, entry in entries.items()},
    }


def check_engine_compat(manifest: Mapping[str, Any], trt_version: str, compute_capability) -> None:
    """Raise ``ValueError`` (saying to rebuild the engines) unless ``manifest`` (``engines.json``,
    or an export manifest holding it under ``tensorrt``) was built by this TensorRT
    major.minor.patch for this GPU's compute capability. Engines are not portable across
    either by default."""
    info = manifest.get("tensorrt", manifest) if isinstance(manifest, Mapping) else {}
    built_version, built_cc = info.get("tensorrt_version"), info.get("compute_capability")
    if not built_version or not built_cc:
        raise ValueError(f"the engine manifest records no TensorRT version or compute capability; {_REBUILD}")
    if _version_tuple(built_version) != _version_tuple(trt_version):
        raise ValueError(f"engines built with TensorRT {built_version}, this is TensorRT {trt_version}; {_REBUILD}")
    if _cc_text(built_cc) != _cc_text(compute_capability):
        raise ValueError(
            f"engines built for compute capability {_cc_text(built_cc)}, this GPU is {_cc_text(compute_capability)}; {_REBUILD}"
        )


def check_engine_folder(directory: str | Path, trt_version: str, compute_capability) -> dict:
    """Read ``engines.json`` of an export folder and :func:`check_engine_compat` it; returns
    it. The runtime calls this before deserializing any engine, so engines from another
    TensorRT version or GPU fail with one "rebuild the engines" message instead of a
    deserialization error deep in TensorRT."""
    file = Path(directory) / ENGINE_MANIFEST_NAME
    if not file.is_file():
        raise ValueError(f"{directory}: {ENGINE_MANIFEST_NAME} is missing (it records the TensorRT version and GPU "
                         f"the engines were built for); {_REBUILD}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: unreadable ({exc}); {_REBUILD}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{file}: not a JSON object; {_REBUILD}")
    try:
        check_engine_compat(manifest, trt_version, compute_capability)
    except ValueError as exc:
        raise ValueError(f"{directory}: {exc}") from None
    return manifest


def folder_inputs(directory: str | Path) -> dict[str, Any]:
    """What :func:`.trt_build.build_engines` needs, read from an export folder made elsewhere
    (e.g. exported with ``--onnx-only`` on a workstation, engines built on the Jetson): the
    specs (rebuilt from ``config.json`` and the manifest), the parser files, precision,
    frames (the most the export serves), opt_frames (its default count) and max_seq_len."""
    from slowfast_trt.models.slowfast.config import SlowFastConfig
    from slowfast_trt.export.manifest import load_manifest

    directory = Path(directory)
    manifest = load_manifest(directory)
    precision = normalize_precision(str(manifest["precision"]))
    config = SlowFastConfig.from_file(directory / "config.json")
    frames, length = int(manifest.get("max_frames", manifest["frames"])), int(manifest["max_seq_len"])
    dtype = precision_settings(S.DECODER, precision)["onnx_dtype"]
    specs = S.subgraph_specs(config, dtype, frames, length, vocab_rows=manifest.get("vocab_rows"))
    subgraphs = manifest["subgraphs"]
    trt_files = {n: subgraphs[n].get("trt_file", subgraphs[n]["file"]) for n in specs if n in subgraphs and specs[n].is_onnx}
    return {"manifest": manifest, "specs": specs, "trt_files": trt_files, "precision": precision,
            "frames": frames, "opt_frames": int(manifest["frames"]), "max_seq_len": length}


def record_engines(directory: str | Path, manifest: dict, engines: Mapping[str, str]) -> dict:
    """``manifest`` with ``engines`` (subgraph -> engine file, what the runtime opens), the
    backend and the folder's file sizes updated; written back to ``manifest.json``."""
    from slowfast_trt.export.manifest import folder_files, write_manifest

    manifest = dict(manifest, engines=dict(engines), backend="tensorrt")
    manifest["files"] = folder_files(Path(directory))
    write_manifest(directory, manifest)
    return manifest


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in str(version).split(".")[:3])
    except ValueError:
        raise ValueError(f"TensorRT version {version!r} is not dotted numbers") from None
    return parts + (0,) * (3 - len(parts))


def _version_tuple_text(version: str) -> str:
    return ".".join(map(str, _version_tuple(version)))


def _cc_text(cc) -> str:
    """(8, 7), "8.7", "sm_87", "87" -> "8.7"."""
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).lower().removeprefix("sm_").removeprefix("sm")
    if "." in text:
        major, minor = text.split(".", 1)
    elif text.isdigit() and len(text) >= 2:
        major, minor = text[:-1], text[-1]
    else:
        raise ValueError(f"compute capability {cc!r} is not like 8.7, (8, 7) or sm_87")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"compute capability {cc!r} is not like 8.7, (8, 7) or sm_87")
    return f"{int(major)}.{int(minor)}"
