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

    enc_cpu, enc_gpu = (rt.session(tiny_release / FILES["encoder"], d) for d in ("cpu", "cuda"))
    side = enc_cpu.get_inputs()[0].shape[2]  # the tiny bundle's network takes 112 px, not the default 224
    images = np.random.default_rng(0).random((3, 3, side, side), dtype=np.float32)
    assert enc_gpu.get_providers()[0] == rt.CUDA
    out_cpu, out_gpu = rt.run(enc_cpu, images=images), rt.run(enc_gpu, images=images)
    # 1e-2 of the output's size: the CUDA provider computes in TF32 on recent GPUs (about 4e-3 off).
    for a, b in zip(out_cpu, out_gpu):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-2 * max(1.0, float(np.abs(a).max()))
    head_cpu, head_gpu = (rt.session(tiny_release / FILES["pair_head"], d) for d in ("cpu", "cuda"))
    names = [i.name for i in head_cpu.get_inputs()]
    feats = {n: out_cpu[0][:2] if n == "query" else out_cpu[0][1:] for n in names}
    for a, b in zip(rt.run(head_cpu, **feats), rt.run(head_gpu, **feats)):
        assert np.abs(a - b).max() <= 1e-2 * max(1.0, float(np.abs(a).max()))


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


@needs_cuda
def test_build_stages_render_on_cuda_like_the_cpu(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path) -> None:
    """The calibration, rvss and gallery stages render their scene (and the gallery encodes its
    views) on CUDA where it exists; on copies of the tiny work folder they agree with the same
    stages on the CPU."""
    import shutil

    from models.bundle import FILES, REPORTS, WORK_FILES
    from models.gallery import Gallery
    from training.calibrate import CalibConfig, run_calibration_stage
    from training.gallery import run_gallery_stage
    from training.rvss import RVSSConfig, load_novel, run_rvss_stage
    from training.splats import default_device

    assert default_device().type == "cuda"  # what the stages use when no device is named
    import training.gallery as gallery_stage

    encoded_on = []
    original = gallery_stage.encode

    def recording(encoder, *args, **kwargs):
        encoded_on.append(next(encoder.parameters()).device.type)
        return original(encoder, *args, **kwargs)

    cat = load_category(tiny_synth)
    out = {}
    for name in ("cpu", "cuda"):
        work = tmp_path / name
        shutil.copytree(tiny_pose_bundle, work)
        for stage in ("calibration", "rvss", "gallery"):  # each stage runs again, not skipped
            (work / REPORTS[stage]).unlink()
        device = torch.device(name)
        calib = run_calibration_stage(cat, CalibConfig(), work, progress=False, device=device)
        rvss = run_rvss_stage(cat, RVSSConfig(), work, progress=False, device=device)
        gallery_stage.encode = recording
        try:
            gallery = run_gallery_stage(cat, work, progress=False, device=device)
        finally:
            gallery_stage.encode = original
        assert [r["device"].split(":")[0] for r in (calib, rvss, gallery)] == [name] * 3
        out[name] = (calib, load_novel(work / WORK_FILES["novel"]), Gallery.load(work / FILES["gallery"]))
    (c_cpu, n_cpu, g_cpu), (c_gpu, n_gpu, g_gpu) = out["cpu"], out["cuda"]
    assert c_gpu["threshold"] == pytest.approx(c_cpu["threshold"], rel=0.05)
    assert (n_gpu.images.float() - n_cpu.images.float()).abs().mean() < 1.0  # uint8 levels
    both = (g_cpu.depths > 0) & (g_gpu.depths > 0)
    assert both.float().mean() > 0.9 * (g_cpu.depths > 0).float().mean()
    rel = ((g_gpu.depths.float() - g_cpu.depths.float()).abs() / g_cpu.depths.float().clamp(min=1e-3))[both]
    assert float(rel.median()) < 0.01
    # The views encode on the stage's device too: the same descriptors, to float precision.
    assert encoded_on == ["cpu", "cuda"]
    assert float((g_gpu.descriptors * g_cpu.descriptors).sum(1).min()) > 0.999


@needs_cuda
def test_heldout_calibration_and_selfcheck_on_cuda_like_the_cpu(tiny_heldout_bundles: Path, tiny_release: Path,
                                                                tiny_synth: Path, tmp_path: Path) -> None:
    """The presets' path: the calibration model's held-out views (aligned, the normal levels
    fitted, the convergence ratio) and the self-check's painted copies, on CUDA and on the CPU."""
    import shutil

    from models.bundle import FILES, REPORTS
    from models.calibration import Calibration
    from tests.conftest import TINY_SPLATS
    from training.calibrate import CalibConfig, run_calibration_stage
    from training.selfcheck import SelfCheckConfig, heldout_in, measure
    from training.splats import preset

    cat = load_category(tiny_synth)
    splats = preset("demo", **{**TINY_SPLATS, "iterations": 20})  # as tiny_heldout_bundles fitted it
    out = {}
    for name in ("cpu", "cuda"):
        work = tmp_path / name
        shutil.copytree(tiny_heldout_bundles / ".work" / tiny_release.name, work)
        (work / REPORTS["calibration"]).unlink()  # runs again, not skipped
        device = torch.device(name)
        cfg = CalibConfig(holdout_every=4, jitters=2, false_alarm_rate=0.1, combination="either", colour="lab",
                          map_sigma=2.0)
        report = run_calibration_stage(cat, cfg, work, progress=False, splats=splats, device=device)  # the presets' rule
        assert report["device"].split(":")[0] == name and report["rule"] == "false_alarm"
        calib = Calibration.model_validate_json((work / FILES["calibration"]).read_text())
        scene, held = heldout_in(work, cat, device)
        assert scene.means.device.type == name
        out[name] = (calib, measure(cat, scene, held, calib, SelfCheckConfig(), progress=False))
    (c_cpu, m_cpu), (c_gpu, m_gpu) = out["cpu"], out["cuda"]
    assert c_gpu.threshold == pytest.approx(c_cpu.threshold, rel=0.05)
    assert c_gpu.heldout_scale == pytest.approx(c_cpu.heldout_scale, rel=0.05)
    levels_cpu, levels_gpu = (np.array(c.scorer["stats"]["levels"]) for c in (c_cpu, c_gpu))
    assert len(levels_cpu) == len(levels_gpu) > 0 and np.allclose(levels_gpu, levels_cpu, rtol=0.1)
    map_cpu, map_gpu = (np.array(c.scorer["stats"]["map_levels"]) for c in (c_cpu, c_gpu))
    assert len(map_cpu) == len(levels_cpu) and np.allclose(map_gpu, map_cpu, rtol=0.1)
    assert c_gpu.scorer["stats"]["map_scale"] == pytest.approx(c_cpu.scorer["stats"]["map_scale"], rel=0.1)
    assert m_gpu.report["device"].split(":")[0] == "cuda" and m_cpu.report["device"] == "cpu"
    assert np.median(np.abs(m_gpu.scores - m_cpu.scores) / np.maximum(m_cpu.scores, 1e-6)) < 0.05
    assert abs(m_gpu.report["image_auroc"] - m_cpu.report["image_auroc"]) <= 0.05


@needs_cuda
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-backbone", "whole-network"])
def test_irprn_trains_on_cuda_like_the_cpu(tiny_pose_bundle: Path, tiny_synth: Path, tmp_path: Path,
                                           frozen: bool, request: pytest.FixtureRequest) -> None:
    """IRPRN's training on CUDA (the CPU presets' frozen backbone, the paper preset's whole
    network): the same pairs from the same start, so the same losses and the same relative
    poses within float noise; the network comes back on the CPU, and a checkpoint written on
    CUDA resumes on the CPU."""
    from pathlib import PurePosixPath

    from models.bundle import WORK_FILES
    from models.camera import quat_to_rotmat, rotation_angle
    from models.irprn import IRPRNConfig, encode
    from training.irprn import preset, train_irprn
    from training.rvss import load_novel

    cat = load_category(tiny_synth)
    novel = load_novel(tiny_pose_bundle / "rvss" / "novel.safetensors")
    cfg = preset("demo", epochs=3, augment_copies=1, checkpoint_every=1, freeze_backbone=frozen,
                 model=IRPRNConfig(input_size=112))
    out = {}
    for name in ("cpu", "cuda"):
        net, report = train_irprn(cat, novel, 1.0, cfg, tmp_path / name, progress=False, device=torch.device(name))
        assert report["device"] == name and {p.device.type for p in net.parameters()} == {"cpu"}
        out[name] = (net, report)
    (n_cpu, r_cpu), (n_gpu, r_gpu) = out["cpu"], out["cuda"]
    losses = [[h["loss"] for h in r["history"]] for r in (r_cpu, r_gpu)]
    assert np.allclose(losses[1], losses[0], rtol=0.05)
    images = torch.stack([v.image for v in cat.train])
    with torch.no_grad():
        preds = []
        for net in (n_cpu, n_gpu):
            feats = encode(net.encoder.eval(), images, 112)
            q, _ = net.head.eval()(feats[:-1], feats[1:])  # each training view against the next
            preds.append(quat_to_rotmat(q[:, -1].double()))
    assert float(torch.rad2deg(rotation_angle(preds[0], preds[1])).max()) < 2.0

    irprn_stops_in_epoch_3 = request.getfixturevalue("irprn_stops_in_epoch_3")  # interrupts from here on
    work = tmp_path / "resume"
    with pytest.raises(KeyboardInterrupt):
        train_irprn(cat, novel, 1.0, cfg, work, progress=False, device=torch.device("cuda"))
    assert (work / PurePosixPath(WORK_FILES["irprn_checkpoint"]).name).is_file()
    irprn_stops_in_epoch_3()  # lets the next run through
    _, report = train_irprn(cat, novel, 1.0, cfg, work, progress=False, device=torch.device("cpu"))
    assert report["resumed_from_epoch"] == 2 and report["device"] == "cpu" and len(report["history"]) == 3
