"""Which stream the kernel wrapper allocates its buffers for (CPU: CUDA replaced by stand-ins).

``kernel.cross_attention(..., stream=s)`` launches on ``s``. torch's caching allocator orders a
reused block only after its earlier users on the stream the block was allocated for, so ``out``
and the workspace must be allocated for ``s`` (under ``torch.cuda.stream(s)``); allocated for the
current stream and written on ``s`` they may still be in use by work queued on the current stream.
Here torch.cuda's stream calls, ``torch.empty`` and the extension are stand-ins that record which
stream was current at each allocation and which stream the launch got. The race itself, on a GPU:
tests/test_kernels_gpu_streams.py.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from slowfast_trt.ops.cross_attention import kernel as kernels

HEADS, KV_HEADS, DIM = 8, 2, 64


class FakeStream:
    def __init__(self, handle: int, device=None):
        self.cuda_stream = handle

    def __eq__(self, other):
        return isinstance(other, FakeStream) and other.cuda_stream == self.cuda_stream

    def __hash__(self):
        return hash(self.cuda_stream)


CURRENT, DEFAULT, SIDE = FakeStream(11), FakeStream(0), FakeStream(77)


class FakeExtension:
    def __init__(self):
        self.launches = []

    def plan(self, *args):
        return {"workspace_bytes": 4096}

    def launch(self, *args):
        self.launches.append(args)


@pytest.fixture()
def fake_cuda(monkeypatch):
    """torch.cuda's stream API and torch.empty as stand-ins; returns the record of allocations."""
    state = {"current": CURRENT, "allocated": {}, "recorded": []}

    @contextlib.contextmanager
    def stream_context(stream):
        previous, state["current"] = state["current"], (stream if stream is not None else state["current"])
        try:
            yield
        finally:
            state["current"] = previous

    real_empty = torch.empty

    def empty(*args, **kwargs):
        kwargs.pop("device", None)
        tensor = real_empty(*args, **kwargs)
        state["allocated"][tensor.data_ptr()] = state["current"].cuda_stream
        return tensor

    def record_stream(tensor, stream):
        state["recorded"].append((tensor.data_ptr(), stream.cuda_stream))

    extension = FakeExtension()
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "ExternalStream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state["current"])
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: DEFAULT)
    monkeypatch.setattr(torch.cuda, "stream", stream_context)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.Tensor, "record_stream", record_stream)
    monkeypatch.setattr(kernels, "_check_device", lambda tensors: torch.device("cpu"))
    monkeypatch.setattr(kernels, "_module", lambda: extension)
    monkeypatch.setattr(kernels, "_device_properties", lambda index: (132, 90))
    monkeypatch.setattr(torch, "empty", empty)
    state["extension"] = extension
    return state


def _inputs(rows: int = 3, slow: int = 10) -> dict:
    return {
        "query": torch.zeros(rows, HEADS, DIM, dtype=torch.float16),
        "slow_key": torch.zeros(1, KV_HEADS, slow, DIM, dtype=torch.float16),
        "slow_value": torch.zeros(1, KV_HEADS, slow, DIM, dtype=torch.float16),
        "slow_lengths": torch.tensor([slow], dtype=torch.int32),
        "row_offsets": torch.tensor([0, rows], dtype=torch.int32),
    }


def _launch_buffers(args) -> tuple[int, int, int]:
    """(out pointer, workspace pointer, stream handle) of one recorded launch."""
    return args[15], args[16], args[18]


@pytest.mark.parametrize("given", [SIDE, SIDE.cuda_stream], ids=["torch-stream", "raw-handle"])
def test_out_and_workspace_are_allocated_for_the_launch_stream(fake_cuda, given):
    inputs = _inputs()
    out = kernels.cross_attention(**inputs, num_heads=HEADS, num_kv_heads=KV_HEADS, scale=DIM**-0.5, stream=given)
    (launch,) = fake_cuda["extension"].launches
    out_ptr, workspace_ptr, handle = _launch_buffers(launch)
    assert handle == SIDE.cuda_stream and out.data_ptr() == out_ptr
    allocated = fake_cuda["allocated"]
    assert allocated[out_ptr] == SIDE.cuda_stream, "out was allocated for another stream than the launch's"
    assert allocated[workspace_ptr] == SIDE.cuda_stream, "the workspace was allocated for another stream"
    assert fake_cuda["current"] is CURRENT  # the caller's current stream is restored


def test_without_a_stream_everything_is_on_the_current_stream(fake_cuda):
    kernels.cross_attention(**_inputs(), num_heads=HEADS, num_kv_heads=KV_HEADS, scale=DIM**-0.5)
    (launch,) = fake_cuda["extension"].launches
    out_ptr, workspace_ptr, handle = _launch_buffers(launch)
    assert handle == CURRENT.cuda_stream
    assert fake_cuda["allocated"][out_ptr] == fake_cuda["allocated"][workspace_ptr] == CURRENT.cuda_stream


def test_a_given_out_is_written_on_the_launch_stream(fake_cuda):
    inputs = _inputs(rows=2)
    out = torch.zeros(2, HEADS * DIM, dtype=torch.float16)
    assert kernels.cross_attention(**inputs, num_heads=HEADS, num_kv_heads=KV_HEADS, scale=0.1, out=out,
                                   stream=SIDE) is out
    (launch,) = fake_cuda["extension"].launches
    _, workspace_ptr, handle = _launch_buffers(launch)
    assert handle == SIDE.cuda_stream and fake_cuda["allocated"][workspace_ptr] == SIDE.cuda_stream


def test_raw_handles_of_the_current_and_default_stream_map_to_torch_streams(fake_cuda):
    device = torch.device("cpu")
    assert kernels.launch_stream(None, device) is CURRENT
    assert kernels.launch_stream(CURRENT.cuda_stream, device) is CURRENT
    assert kernels.launch_stream(0, device) is DEFAULT  # the legacy default stream, not an ExternalStream(0)
    assert kernels.launch_stream(SIDE, device) is SIDE
    assert kernels.launch_stream(123, device).cuda_stream == 123
