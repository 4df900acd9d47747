"""Reading NVIDIA Jetson ``tegrastats``: parse its lines; run it around a workload.

    from slowfast_trt.tools.tegrastats import Tegrastats, parse_line
    with Tegrastats(interval_ms=100) as stats:      # needs the tegrastats binary (JetPack)
        run_the_model()
    print(summarize(stats.samples))

One line per interval (JetPack 6, Orin Nano; AGX Orin names its rails differently)::

    11-15-2024 08:38:09 RAM 6185/7620MB (lfb 8x2MB) SWAP 851/3810MB (cached 1MB)
    CPU [15%@729,11%@729,...] EMC_FREQ 43%@2133 GR3D_FREQ 63%@[621] NVDEC off ... APE 200
    cpu@53.968C soc2@52.437C ... tj@53.968C VDD_IN 12479mW/12479mW VDD_CPU_GPU_CV 4667mW/4667mW
    VDD_SOC 2817mW/2817mW

Parsed: timestamp, RAM and swap (MB as printed, i.e. MiB), per-core CPU load and clock
(``off`` -> None), EMC (memory controller) load and clock, GR3D (GPU) load and clocks
(``63%@[621]``, ``10%@1300``, ``12%@[1300,1300]``, or ``@[1000,1000]`` without a load),
temperatures (``name@45.5C``, also ``name@X/YC``), and power rails ``NAME now/avg[/max]mW``.
Module power is ``VDD_IN`` (Orin NX / Nano) or, on AGX Orin, ``VDD_GPU_SOC + VDD_CPU_CV +
VIN_SYS_5V0``. Rails need root on some images; without it they are simply absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Iterable, TextIO

_TIMESTAMP = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"\b([A-Za-z][\w-]*)@(-?[\d.]+)C(?:/-?[\d.]+C)?")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW(?:/(\d+)mW)?(?:/(\d+)mW)?")
AGX_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")


@dataclass(frozen=True)
class Rail:
    """A power rail: instantaneous, running average (since tegrastats started) and max, in mW."""

    now_mw: int
    avg_mw: int | None = None
    max_mw: int | None = None


@dataclass(frozen=True)
class TegraSample:
    """One parsed ``tegrastats`` line; fields the line lacks are None / empty."""

    timestamp: str | None = None
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    cpu_load: tuple[int | None, ...] = ()
    cpu_freq_mhz: tuple[int | None, ...] = ()
    emc_load: int | None = None
    emc_freq_mhz: int | None = None
    gpu_load: int | None = None
    gpu_freq_mhz: tuple[int, ...] = ()
    temperatures: dict[str, float] = field(default_factory=dict)
    rails: dict[str, Rail] = field(default_factory=dict)

    @property
    def module_power_mw(self) -> int | None:
        """Module input power: ``VDD_IN``, else the sum of AGX Orin's three rails."""
        if "VDD_IN" in self.rails:
            return self.rails["VDD_IN"].now_mw
        if all(name in self.rails for name in AGX_RAILS):
            return sum(self.rails[name].now_mw for name in AGX_RAILS)
        return None


def _cpu(text: str) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    loads, freqs = [], []
    for core in (c.strip() for c in text.split(",") if c.strip()):
        match = re.fullmatch(r"(\d+)%(?:@(\d+))?", core)
        loads.append(int(match.group(1)) if match else None)  # "off": a powered-down core
        freqs.append(int(match.group(2)) if match and match.group(2) else None)
    return tuple(loads), tuple(freqs)


def parse_line(line: str) -> TegraSample:
    """Parse one ``tegrastats`` line; ValueError if it has none of RAM, GR3D_FREQ or a rail."""
    timestamp = _TIMESTAMP.match(line)
    ram, swap, cpu, emc, gr3d = (p.search(line) for p in (_RAM, _SWAP, _CPU, _EMC, _GR3D))
    rails = {
        m.group(1): Rail(int(m.group(2)), *(int(g) if g else None for g in m.group(3, 4)))
        for m in _RAIL.finditer(line)
    }
    if not (ram or gr3d or rails):
        raise ValueError(f"not a tegrastats line: {line[:80]!r}")
    loads, freqs = _cpu(cpu.group(1)) if cpu else ((), ())
    return TegraSample(
        timestamp=timestamp.group(1) if timestamp else None,
        ram_used_mb=int(ram.group(1)) if ram else None,
        ram_total_mb=int(ram.group(2)) if ram else None,
        swap_used_mb=int(swap.group(1)) if swap else None,
        swap_total_mb=int(swap.group(2)) if swap else None,
        cpu_load=loads,
        cpu_freq_mhz=freqs,
        emc_load=int(emc.group(1)) if emc else None,
        emc_freq_mhz=int(emc.group(2)) if emc and emc.group(2) else None,
        gpu_load=int(gr3d.group(1)) if gr3d and gr3d.group(1) else None,
        gpu_freq_mhz=tuple(int(f) for f in gr3d.group(2).split(",") if f) if gr3d and gr3d.group(2) else (),
        temperatures={m.group(1): float(m.group(2)) for m in _TEMP.finditer(line)},
        rails=rails,
    )


def parse_lines(lines: Iterable[str]) -> list[TegraSample]:
    """Every parseable line (blank or foreign lines, e.g. a sudo prompt, are skipped)."""
    samples = []
    for line in lines:
        try:
            samples.append(parse_line(line.strip()))
        except ValueError:
            continue
    return samples


def summarize(samples: list[TegraSample], interval_ms: float | None = None) -> dict:
    """Peak RAM, mean/max GPU load, mean and peak module power, and (with ``interval_ms``)
    the energy in joules, integrating the instantaneous module power over the samples."""
    def values(get):
        return [v for v in (get(s) for s in samples) if v is not None]

    ram, gpu, power = values(lambda s: s.ram_used_mb), values(lambda s: s.gpu_load), values(lambda s: s.module_power_mw)
    out = {
        "samples": len(samples),
        "ram_peak_mb": max(ram, default=None),
        "gpu_load_mean": sum(gpu) / len(gpu) if gpu else None,
        "gpu_load_max": max(gpu, default=None),
        "power_mean_mw": sum(power) / len(power) if power else None,
        "power_peak_mw": max(power, default=None),
    }
    if interval_ms and power:
        out["energy_j"] = sum(power) * interval_ms / 1e6
    return out


class Tegrastats:
    """``tegrastats --interval MS`` as a child process; its lines parsed into ``samples``."""

    def __init__(self, interval_ms: int = 100, binary: str = "tegrastats"):
        if not isinstance(interval_ms, int) or interval_ms < 1:
            raise ValueError(f"interval_ms must be a positive integer, got {interval_ms!r}")
        self.interval_ms, self.binary = interval_ms, binary
        self.samples: list[TegraSample] = []
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @staticmethod
    def available(binary: str = "tegrastats") -> str | None:
        """Path of the binary, or None (not a Jetson, or not on PATH)."""
        return shutil.which(binary)

    def consume(self, stream: TextIO) -> None:
        """Parse lines from ``stream`` into ``samples`` until it ends (the reader thread's loop)."""
        for line in stream:
            self.samples.extend(parse_lines([line]))

    def start(self) -> Tegrastats:
        path = self.available(self.binary)
        if path is None:
            raise ValueError(f"{self.binary!r} not found on PATH: tegrastats ships with JetPack on Jetson modules only")
        if self._proc is not None:
            raise ValueError("tegrastats is already running")
        self._proc = subprocess.Popen([path, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._reader = threading.Thread(target=self.consume, args=(self._proc.stdout,), daemon=True)
        self._reader.start()
        return self

    def stop(self) -> list[TegraSample]:
        """Stop the child (SIGTERM, then SIGKILL after 2 s) and return the samples."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._reader.join(timeout=2)
            self._proc = self._reader = None
        return self.samples

    def __enter__(self) -> Tegrastats:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
