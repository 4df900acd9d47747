"""The Jetson Orin modules the memory planners size for (Slow-Fast's ``jetson_memory``, LongVU's
``longvu_budget``): memory visible to Linux, DRAM bandwidth, and the reserve kept for the OS."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEVICES", "Device", "GIB", "RESERVE_BYTES"]

GIB = 1 << 30
RESERVE_BYTES = 2 * GIB  # OS, CUDA context and TensorRT runtime (an estimate: measure with tegrastats)


@dataclass(frozen=True)
class Device:
    """A Jetson module: memory visible to Linux (MiB, as ``tegrastats`` totals it) and DRAM bandwidth.

    Bandwidth = EMC clock x 2 (DDR) x bus width: 3200 MHz x 2 x 256 bit = 204.8 GB/s (AGX Orin),
    x 128 bit = 102.4 GB/s (Orin NX), 2133 MHz x 2 x 128 bit = 68.3 GB/s (Orin Nano 8GB;
    102 GB/s with JetPack 6.1+ "Super" clocks). The ``tegrastats`` lines recorded in
    ``tests/test_tegrastats.py`` show ``EMC_FREQ ...@3199`` on an AGX Orin and ``@2133`` on an
    Orin Nano, and RAM totals 62817 / 30698 / 7620 MB.
    """

    name: str
    memory_mib: int
    bandwidth_gbs: float
    memory_note: str


DEVICES = (
    Device("AGX Orin 64GB", 62817, 204.8, "tegrastats total"),
    Device("AGX Orin 32GB", 30698, 204.8, "tegrastats total"),
    Device("Orin NX 16GB", 15_258, 102.4, "estimate: 16 GiB x 7620/8192 (the Nano's visible share)"),
    Device("Orin Nano 8GB", 7620, 68.0, "tegrastats total"),
)
