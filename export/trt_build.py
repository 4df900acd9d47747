"""TensorRT engines from an export folder: the only module that imports ``tensorrt`` (lazily).

    slowfast-trt-build DIR [--vision-batch 8] [--max-prefill-rows N]
        [--no-nocross] [--workspace-gib G]      # on the target device, e.g. a Jetson

Plans, flags, profiles, file names and manifests come from :mod:`.trt_plan`; this file only
hands them to TensorRT. Called by the export CLI's ``--backend tensorrt`` hook; writes
``<name>.engine`` per ONNX subgraph, ``engines.json`` (TensorRT version, compute capability,
profiles: checked by :func:`.trt_plan.check_engine_compat`) and ``trt_build_log.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping

from slowfast_trt.trt_import import import_tensorrt as _import_tensorrt
from slowfast_trt.export import trt_plan as P

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "slowfast_trt"


def import_tensorrt():
    """``import tensorrt``, or a ValueError saying what to do instead."""
    return _import_tensorrt("build the engines on the target device (JetPack ships TensorRT), or export with --onnx-only")


def _logger(trt, messages: list):
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # TensorRT calls this from C++; keep it exception-free
            messages.append((str(severity).rsplit(".", 1)[-1], str(msg)))

    return Logger()


def _device() -> tuple[tuple[int, int], str]:
    import torch

    if not torch.cuda.is_available():
        raise ValueError("building TensorRT engines needs a CUDA device and a CUDA build of torch")
    return torch.cuda.get_device_capability(), torch.cuda.get_device_name()


def build_engine(trt, onnx_file: Path, settings: P.BuildSettings, cache_bytes: bytes, messages: list):
    """(serialized engine, serialized timing cache) for one subgraph."""
    logger = _logger(trt, messages)  # referenced until the build ends: TensorRT holds a raw pointer
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_file}: TensorRT could not parse it: {errors}")
    config = builder.create_builder_config()
    for flag in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in settings.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if settings.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    for plan in settings.profiles:
        profile = builder.create_optimization_profile()
        for name, low, opt, high in plan.shapes:
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ValueError(f"{onnx_file}: the TensorRT build failed (see trt_build_log.json)")
    return bytes(engine), bytes(config.get_timing_cache().serialize())


def build_engines(
    stage: Path,
    trt_files: Mapping[str, str],
    specs: Mapping,
    *,
    precision: str,
    frames: int,
    max_seq_len: int,
    progress: Callable[[str], None] = lambda msg: None,
    timing_cache_dir: Path | None = None,
    vision_batch: int | None = None,
    frame_counts=None,
    max_prefill_rows: int | None = None,
    include_nocross: bool = True,
    workspace_bytes: int | None = None,
    opt_frames: int | None = None,
) -> dict[str, str]:
    """Build one engine per ONNX subgraph in ``stage`` for 1..``frames`` frames; returns
    {subgraph: engine file}. Keyword options: :func:`.trt_plan.plan_engines` (Jetson: bound
    them, see there)."""
    plans = P.plan_engines(specs, precision, frames, max_seq_len, frame_counts=frame_counts, vision_batch=vision_batch,
                           max_prefill_rows=max_prefill_rows, include_nocross=include_nocross,
                           workspace_bytes=workspace_bytes, opt_frames=opt_frames)
    trt = import_tensorrt()
    from slowfast_trt.ops.cross_attention.plugin import load_plugin_library

    load_plugin_library(trt)  # once per process: the runtime may load engines in this process next
    capability, device_name = _device()
    cache_path = P.timing_cache_path(timing_cache_dir or DEFAULT_CACHE_DIR, trt.__version__, capability)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    files, entries, log = {}, {}, []
    for name, settings in plans.items():
        onnx_file = P.prepare_onnx_for_parser(Path(stage) / trt_files.get(name, specs[name].file))
        progress(f"TensorRT: building {name} ({settings.precision}, {len(settings.profiles)} profile(s))")
        messages, start = [], time.perf_counter()
        try:
            engine, cache_bytes = build_engine(trt, onnx_file, settings, cache_bytes, messages)
        finally:
            log.append(P.build_log_entry(settings, onnx_file.name, f"{name}.engine", time.perf_counter() - start,
                                         0, messages, str(cache_path)))
            P.write_json(Path(stage) / P.BUILD_LOG_NAME, {"tensorrt_version": trt.__version__, "engines": log})
        (Path(stage) / f"{name}.engine").write_bytes(engine)
        log[-1]["engine_bytes"] = len(engine)
        files[name] = f"{name}.engine"
        entries[name] = {"file": files[name], "onnx_file": onnx_file.name, **settings.to_json()}
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(cache_bytes)
    P.write_json(Path(stage) / P.BUILD_LOG_NAME, {"tensorrt_version": trt.__version__, "engines": log})
    P.write_json(Path(stage) / P.ENGINE_MANIFEST_NAME,
                 P.engine_manifest(trt.__version__, capability, device_name, precision, entries))
    return files
