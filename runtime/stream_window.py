"""Which frames a live window holds: the two policies, as plain bookkeeping (no tensors).

Frames are numbered 0, 1, 2, ... in the order they reach the window (after ``sample_fps``
sampling). A window of size N holds at most N of them, each in one of N slots of the
stream's ring buffers, and answers questions over the held frames in that order:

* ``recent``: the last N frames, ``max(0, seen - N) .. seen - 1``. A new frame evicts the
  oldest (its slot is reused).
* ``uniform``: the frames whose number is a multiple of the interval k, where k is the
  smallest power of two with ``ceil(seen / k) <= N``: frames ``0, k, 2k, ...``, evenly spread
  over everything seen so far. When a frame would make N + 1, the interval doubles and every
  held frame whose number is not a multiple of 2k is evicted (decimation: every other frame
  goes); frames that are not a multiple of the interval are never encoded. So the window
  holds between ceil(N / 2) and N frames, always frame 0, and the newest held frame is at
  most k - 1 frames older than the newest seen; an hour of video costs what N frames cost.

:class:`FrameWindow` plans each admission before the frame is encoded (:meth:`plan`: keep or
skip, which frames go, which slot) and applies it afterwards (:meth:`admit`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["POLICIES", "Admission", "FrameWindow", "HeldFrame"]

POLICIES = ("recent", "uniform")


@dataclass(frozen=True)
class HeldFrame:
    """A frame in the window: its number (0-based, in arrival order), stream time, ring slot,
    and when it arrived (seconds since the stream opened, on the wall clock)."""

    index: int
    timestamp_s: float
    slot: int
    arrived_s: float = 0.0

    def to_json(self) -> dict:
        return {"index": self.index, "timestamp_s": round(self.timestamp_s, 6), "arrived_s": round(self.arrived_s, 6)}


@dataclass(frozen=True)
class Admission:
    """What admitting the next frame does: ``keep`` it in ``slot`` after evicting ``evict``."""

    index: int
    keep: bool
    slot: int
    evict: tuple[HeldFrame, ...]
    interval: int


class FrameWindow:
    """The held frames of a window of ``size`` slots under ``policy`` (module docstring)."""

    def __init__(self, size: int, policy: str = "recent"):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"window must be an integer >= 1, got {size!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.size, self.policy = size, policy
        self.seen = 0  # frames offered so far
        self.interval = 1  # uniform: frames kept are multiples of it
        self.held: list[HeldFrame] = []  # in arrival order

    def plan(self) -> Admission:
        """The admission of frame number ``seen`` (nothing changes until :meth:`admit`)."""
        index, interval, evict = self.seen, self.interval, []
        if self.policy == "recent":
            if len(self.held) == self.size:
                evict = [self.held[0]]
            keep = True
        else:
            if -(-(index + 1) // interval) > self.size:  # ceil((seen + 1) / k) > N: decimate
                interval *= 2
                evict = [h for h in self.held if h.index % interval]
            keep = index % interval == 0
        used = {h.slot for h in self.held} - {h.slot for h in evict}
        slot = min(set(range(self.size)) - used) if keep else -1
        return Admission(index, keep, slot, tuple(evict), interval)

    def admit(self, admission: Admission, timestamp_s: float, arrived_s: float = 0.0) -> None:
        """Apply ``admission`` (from :meth:`plan`, with nothing admitted in between)."""
        if admission.index != self.seen:
            raise ValueError(f"admission for frame {admission.index}, but the window is at frame {self.seen}")
        gone = {h.index for h in admission.evict}
        self.held = [h for h in self.held if h.index not in gone]
        if admission.keep:
            self.held.append(HeldFrame(admission.index, float(timestamp_s), admission.slot, float(arrived_s)))
        self.interval = admission.interval
        self.seen += 1

    def __len__(self) -> int:
        return len(self.held)

    def __repr__(self) -> str:
        return (f"FrameWindow(size={self.size}, policy={self.policy!r}, seen={self.seen}, interval={self.interval}, "
                f"held={[h.index for h in self.held]})")
