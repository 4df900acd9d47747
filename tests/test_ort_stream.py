"""ONNX Runtime on CUDA runs on a torch stream: provider and run options, no host synchronisation.

A call used to synchronise torch's stream before the run and the outputs after it. Now the
session gets a torch stream of the engine as its ``user_compute_stream`` and runs without the
end-of-run synchronisation; ordering with torch's current stream is by ``wait_stream``. The
options are checked here; the run itself needs onnxruntime-gpu and a GPU (the gpu test below).
"""

from __future__ import annotations

import pytest
import torch

from slowfast_trt.runtime.ort_engine import ort_providers, run_options


def test_cuda_providers_carry_the_stream():
    (name, options), cpu = ort_providers(torch.device("cuda:1"), stream=0x7F00AB)
    assert name == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options == {"device_id": 1, "has_user_compute_stream": "1", "user_compute_stream": str(0x7F00AB)}
    # Handle 0 (torch's legacy default stream) means "no stream" to ONNX Runtime: never passed.
    assert ort_providers(torch.device("cuda"), stream=0)[0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert ort_providers(torch.device("cpu"), stream=123) == ["CPUExecutionProvider"]


def test_cuda_runs_do_not_synchronise_at_the_end():
    assert run_options(torch.device("cuda")).get_run_config_entry("disable_synchronize_execution_providers") == "1"
    with pytest.raises(Exception):  # not set on CPU (nothing to synchronise)
        run_options(torch.device("cpu")).get_run_config_entry("disable_synchronize_execution_providers")


@pytest.mark.gpu
def test_a_cuda_run_matches_cpu_without_host_synchronisation(tmp_path, monkeypatch):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from slowfast_trt.runtime.ort_engine import OrtEngine, cuda_provider_available

    if not cuda_provider_available():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "y"], ["z"]), helper.make_node("Relu", ["z"], ["out"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", "n"]) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", "n"])])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    engine = OrtEngine("mm", path, device="cuda")
    syncs = []
    for target in (torch.cuda.Stream, torch.cuda.Event):
        original = target.synchronize
        monkeypatch.setattr(target, "synchronize", lambda self, _o=original: (syncs.append(self), _o(self))[1])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append("device"))
    x = torch.randn(512, 512, device="cuda")
    y = torch.randn(512, 512, device="cuda")
    out = engine.run({"x": x, "y": y})["out"]
    doubled = out * 2  # on torch's stream, ordered after ONNX Runtime's by wait_stream
    assert syncs == [], "a call synchronised the host"
    monkeypatch.undo()
    np.testing.assert_allclose(doubled.cpu().numpy(), 2 * np.maximum(x.cpu().numpy() @ y.cpu().numpy(), 0),
                               rtol=1e-3, atol=1e-3)
