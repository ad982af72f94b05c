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
