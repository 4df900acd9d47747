"""The I/O description of one exported subgraph, shared by every family's specs, the exporter,
the runtime and the tests."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SubgraphSpec", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``shape`` holds ints and names of dynamic dimensions."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # float32 / float16 / int64 / int32 / uint8


@dataclass(frozen=True)
class SubgraphSpec:
    """One exported subgraph.

    ``dims`` gives (name, min, max) for every named dimension, e.g. for TensorRT profiles.
    ``data_file`` is the external-data file holding its weights ("" for none);
    ``decoder`` and ``decoder_nocross`` share one.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    file: str
    dims: tuple[tuple[str, int, int], ...] = ()
    data_file: str = ""

    @property
    def is_onnx(self) -> bool:
        return self.file.endswith(".onnx")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def dim_range(self, name: str) -> tuple[int, int]:
        for dim, low, high in self.dims:
            if dim == name:
                return low, high
        raise KeyError(f"{self.name}: no dynamic dimension {name!r}")
