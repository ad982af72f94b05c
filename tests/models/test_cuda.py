"""The CUDA path against the CPU path on the same inputs (run where CUDA exists: `make gpu-check`).

gsplat against our rasterizer is in ``splat/test_rasterizer.py``; here, ONNX Runtime's CUDA
provider against its CPU provider on the tiny bundle's networks, and the whole Inspector
on CUDA against the Inspector on the CPU on the same queries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import load_category

pytestmark = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _ort_has_cuda() -> bool:
    from models import onnx_runtime as rt

    return rt.CUDA in rt.ort.get_available_providers()


@needs_cuda
@pytest.mark.skipif(not _ort_has_cuda(), reason="needs onnxruntime-gpu (the gpu extra)")
def test_onnx_cuda_provider_matches_cpu(tiny_release: Path) -> None:
    from models import onnx_runtime as rt
    from models.bundle import FILES

    images = np.random.default_rng(0).random((3, 3, 224, 224), dtype=np.float32)
    enc_cpu, enc_gpu = (rt.session(tiny_release / FILES["encoder"], d) for d in ("cpu", "cuda"))
    assert enc_gpu.get_providers()[0] == rt.CUDA
    out_cpu, out_gpu = rt.run(enc_cpu, images=images), rt.run(enc_gpu, images=images)
    for a, b in zip(out_cpu, out_gpu):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(np.abs(a).max()))
    head_cpu, head_gpu = (rt.session(tiny_release / FILES["pair_head"], d) for d in ("cpu", "cuda"))
    names = [i.name for i in head_cpu.get_inputs()]
    feats = {n: out_cpu[0][:2] if n == "query" else out_cpu[0][1:] for n in names}
    for a, b in zip(rt.run(head_cpu, **feats), rt.run(head_gpu, **feats)):
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(np.abs(a).max()))


@needs_cuda
def test_inspector_on_cuda_matches_cpu(tiny_release: Path, tiny_synth: Path) -> None:
    """Same queries, both devices: the same gallery matches, poses within a fraction of a
    degree, scores within a few per cent, and the same verdicts away from the threshold."""
    from models.camera import rotation_angle
    from models.inspector import Inspector

    cat = load_category(tiny_synth)
    images = torch.stack([q.image for q in cat.test])
    cpu = Inspector.load(tiny_release, "cpu").inspect(images)
    gpu_inspector = Inspector.load(tiny_release, "cuda")
    assert gpu_inspector.device.type == "cuda" and gpu_inspector.scene.means.is_cuda
    gpu = gpu_inspector.inspect(images)
    threshold = cpu[0].threshold
    for a, b in zip(cpu, gpu):
        assert a.gallery_matches[0].id == b.gallery_matches[0].id
        angle = rotation_angle(torch.from_numpy(a.pose_matrix[:3, :3]), torch.from_numpy(b.pose_matrix[:3, :3]))
        assert float(torch.rad2deg(angle)) < 0.5
        assert b.score == pytest.approx(a.score, rel=0.05)
        if abs(a.score - threshold) > 0.1 * threshold:
            assert a.verdict == b.verdict
