"""One memory mapping of a data file whose weights several ONNX Runtime sessions read.

``decoder`` and ``decoder_nocross`` are two graphs over the same ``decoder.onnx.data`` (the
second stores no weights of its own). Opened separately, each session maps the file itself:
the physical pages are shared, but every mapping counts them in the process's resident set
(RSS 10.2 GB for 3.85 GB of weights at 7B widths, 2 layers; ``docs/performance.md``), and
that is the number tools and out-of-memory killers read. Here the file is mapped once
(``numpy.memmap``, read-only), each external initializer becomes an ``OrtValue`` over its
region of that mapping, and every session gets the same values through
``SessionOptions.add_initializer``: ONNX Runtime then uses that memory as the initializer
(no copy, no file read of its own), so the weights are resident once, whatever the number of
sessions. Prepacking stays off for these sessions (a packed copy per session would defeat it).

The values must outlive the sessions: each engine keeps a reference to this object.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SharedWeights"]

# ONNX element types of less than a byte (INT4, UINT4, FLOAT4E2M1): TensorProto numbers, stable
# across onnx versions.
_SUB_BYTE = {22, 21, 23}


class SharedWeights:
    """External initializers of graphs in one export folder, each region mapped once."""

    def __init__(self) -> None:
        self._files: dict[Path, np.memmap] = {}
        self._values: dict[tuple[Path, int, int], object] = {}  # (file, offset, length) -> OrtValue

    def add_to(self, options, graph: Path) -> int:
        """Give ``options`` every external initializer of ``graph`` that has a numpy view (not the
        packed 4-bit ones); returns how many."""
        import onnx
        from onnx import external_data_helper, helper
        import onnxruntime as ort

        graph = Path(graph)
        count = 0
        for tensor in onnx.load(str(graph), load_external_data=False).graph.initializer:
            if not external_data_helper.uses_external_data(tensor):
                continue
            info = external_data_helper.ExternalDataInfo(tensor)
            path = (graph.parent / info.location).resolve()
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
            length = int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
            if tensor.data_type in _SUB_BYTE or (info.length is not None and int(info.length) != length):
                continue  # packed 4-bit types have no numpy view: ONNX Runtime reads those itself
            key = (path, int(info.offset or 0), length)
            value = self._values.get(key)
            if value is None:
                region = self._map(path)[key[1]: key[1] + key[2]]
                if region.size != key[2]:
                    raise ValueError(f"{graph.name}: initializer {tensor.name} lies beyond the end of {path.name}")
                value = ort.OrtValue.ortvalue_from_numpy(region.view(dtype).reshape(tuple(tensor.dims)))
                self._values[key] = value
            options.add_initializer(tensor.name, value)
            count += 1
        return count

    def _map(self, path: Path) -> np.memmap:
        if path not in self._files:
            if not path.is_file():
                raise ValueError(f"weight file {path} not found")
            self._files[path] = np.memmap(path, dtype=np.uint8, mode="r")
        return self._files[path]
