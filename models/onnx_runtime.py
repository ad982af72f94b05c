"""ONNX Runtime sessions on the best device available: CUDA when onnxruntime-gpu and a GPU
are present (``device="auto"``), else the CPU. One of onnxruntime / onnxruntime-gpu is
installed (the ``cpu`` / ``gpu`` extras), never both (NOTES section 7)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch  # also loads the CUDA libraries onnxruntime-gpu shares with torch's wheel

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
log = logging.getLogger("rpe_pad.onnx")


def providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` in ``auto | cuda | cpu``."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {device!r}")
    has_cuda = CUDA in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise RuntimeError("device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                           "(install the gpu extra on a CUDA host)")
    return [CUDA, CPU] if has_cuda and device != "cpu" else [CPU]


def session(path: Path, device: str = "auto") -> ort.InferenceSession:
    opts = ort.SessionOptions()
    # EXTENDED, not ALL: ALL adds the NCHWc layout transform on CPU, which reorders float
    # sums enough to move encoder features by 1e-4 against PyTorch (measured 1.03e-4 vs
    # 5.4e-5); two PyTorch thread counts already differ by 3.6e-5.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    # No spin-waiting after a run: ONNX Runtime's pool threads otherwise keep the cores
    # busy while the render and the scorer (torch) run next. On this 2-core CPU, batch-4
    # throughput of the default pipeline rose from 2.86-2.93 to 3.20-3.23 queries/s and the
    # batch-1 pose stage fell from 23-26 to 7-8 ms (rpe-pad lab bench, docs/SERVICE.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # One CPU budget for the calling thread: as many pool threads as torch's team has (both
    # default to the cores; the service's RPEPAD_THREADS sets torch's on its inference thread).
    opts.intra_op_num_threads = torch.get_num_threads()
    asked = providers(device)
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=asked)
    # onnxruntime-gpu lists its CUDA provider whether or not it can start: where its CUDA or
    # cuDNN libraries do not load, it logs an error and builds the session on the CPU.
    if asked[0] == CUDA and sess.get_providers()[0] != CUDA:
        why = (f"{path.name}: onnxruntime-gpu could not start its CUDA provider (its log above says why: most often "
               "the CUDA or cuDNN libraries it needs), so the session runs on the CPU")
        if device == "cuda":
            raise RuntimeError(f"device 'cuda' asked for, but {why}")
        log.warning("%s", why)
    return sess


def run(sess: ort.InferenceSession, **inputs: np.ndarray) -> list[np.ndarray]:
    """Run with float32 C-contiguous inputs by name."""
    return sess.run(None, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()})
