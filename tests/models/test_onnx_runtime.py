"""ONNX Runtime sessions: provider choice and the session options every session gets."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from models import onnx_runtime as rt


def _tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.zeros(1, 3),), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def test_session_runs_on_cpu_without_spinning(tmp_path: Path) -> None:
    sess = rt.session(_tiny_model(tmp_path / "tiny.onnx"), device="cpu")
    assert sess.get_providers() == [rt.CPU]
    # Pool threads must not spin after a run: they would take the cores from the torch stages.
    assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = np.arange(6, dtype=np.float64).reshape(2, 3)  # float64 in: run() casts to float32
    (y,) = rt.run(sess, x=x)
    assert y.shape == (2, 2) and y.dtype == np.float32


def test_provider_choice() -> None:
    assert rt.providers("cpu") == [rt.CPU]
    with pytest.raises(ValueError):
        rt.providers("tpu")
    if rt.CUDA not in rt.ort.get_available_providers():
        assert rt.providers("auto") == [rt.CPU]
        with pytest.raises(RuntimeError):
            rt.providers("cuda")


def test_an_inspector_on_cuda_asks_for_the_best_runtime_not_a_strict_one() -> None:
    """An inspector's pose network runs where ONNX Runtime can: on CUDA with onnxruntime-gpu,
    on the CPU otherwise (the first GPU run had torch on CUDA and the CPU package, and the
    strict 'cuda' refused to load the bundle); a CPU inspector keeps it on the CPU."""
    from models.inspector import pose_runtime_device

    assert pose_runtime_device(torch.device("cpu")) == "cpu"
    assert pose_runtime_device(torch.device("cuda", 0)) == "auto"
    assert rt.providers(pose_runtime_device(torch.device("cuda")))[-1] == rt.CPU  # never refuses


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")  # the CPU package's
def test_a_cuda_provider_that_does_not_start_is_told_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime-gpu lists its CUDA provider even where the CUDA libraries fail to load, and
    then builds the session on the CPU with no exception. Played here by the CPU package told
    to list CUDA: asked for ``cuda`` the session is refused, with ``auto`` it warns; either way
    nothing reports CUDA for a session on the CPU."""
    model = _tiny_model(tmp_path / "tiny.onnx")
    monkeypatch.setattr(rt.ort, "get_available_providers", lambda: [rt.CUDA, rt.CPU])
    if rt.CUDA in rt.ort.InferenceSession(str(model), providers=[rt.CUDA, rt.CPU]).get_providers():
        pytest.skip("this onnxruntime starts its CUDA provider")
    with pytest.raises(RuntimeError, match="could not start its CUDA provider"):
        rt.session(model, device="cuda")
    with caplog.at_level("WARNING", logger="rpe_pad.onnx"):
        sess = rt.session(model, device="auto")
    assert sess.get_providers() == [rt.CPU]
    assert "runs on the CPU" in caplog.text


def test_categories_tell_where_the_pose_network_runs(tiny_release: Path) -> None:
    from models.inspector import Inspector

    inspector = Inspector.load(tiny_release, device="cpu")
    info = inspector.describe()
    assert info.device == "cpu" and info.pose_device == "cpu"
    inspector.estimator.providers = [rt.CUDA, rt.CPU]  # as a session on a GPU host lists them
    assert inspector.describe().pose_device == "cuda"
    inspector.estimator.providers, inspector.device = ["torch"], torch.device("cuda")  # the lab's PyTorch network
    assert inspector.describe().pose_device == "cpu"  # from_torch keeps it on the CPU whatever the inspector's device
