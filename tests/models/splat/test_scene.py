"""Gaussian scenes on disk (safetensors with metadata) and the render call on them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models import camera
from models.splat.scene import GaussianScene, SceneError, render
from lab.benchmarks import random_scene


def _cam(size: int = 32):
    eye = torch.tensor([[3.0, 1.0, 1.5]], dtype=torch.float64)
    vm = camera.look_at(eye, torch.zeros_like(eye), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float()
    return vm, camera.intrinsics_from_fov(0.69, size, size)[None].float()


def test_save_load_round_trip(tmp_path: Path) -> None:
    scene = random_scene(300, seed=2)
    scene.sh_degree = 1
    scene.shN = torch.randn(300, 3, 3) * 0.1
    scene.background = (0.0, 0.5, 1.0)
    scene.normalization = {"scene_scale": 4.2}
    scene.save(tmp_path / "s.safetensors")
    back = GaussianScene.load(tmp_path / "s.safetensors")
    for name, tensor in scene.params().items():
        assert torch.equal(getattr(back, name), tensor)
    assert back.sh_degree == 1 and back.background == (0.0, 0.5, 1.0)
    assert back.normalization == {"scene_scale": 4.2} and back.semantics == "gsplat-1.5.3"
    vm, K = _cam()
    assert torch.equal(render(scene, vm, K, 32, 32).colors, render(back, vm, K, 32, 32).colors)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"garbage")
    with pytest.raises(SceneError, match="cannot read"):
        GaussianScene.load(path)
    save_file({"means": torch.zeros(2, 3)}, str(path), metadata={"format": "something-else"})
    with pytest.raises(SceneError, match="not an rpe-pad Gaussian scene"):
        GaussianScene.load(path)
    scene = random_scene(10)
    scene.save(path)
    tensors = {k: v.clone() for k, v in scene.params().items()}
    tensors["scales"] = tensors["scales"][:5]
    save_file(tensors, str(path), metadata={"format": "rpe-pad-gaussians", "version": "1", "sh_degree": "0", "background": "[1, 1, 1]"})
    with pytest.raises(SceneError, match="scales has shape"):
        GaussianScene.load(path)
    tensors = {k: v.clone() for k, v in scene.params().items()}
    tensors["means"][0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "rpe-pad-gaussians", "version": "1", "sh_degree": "0", "background": "[1, 1, 1]"})
    with pytest.raises(SceneError, match="non-finite"):
        GaussianScene.load(path)


def _rewritten(path: Path, tensors=lambda t: None, **metadata) -> Path:
    """A valid 10-Gaussian scene file with its tensors edited by ``tensors`` and ``metadata`` replaced."""
    random_scene(10).save(path)
    with safe_open(str(path), framework="pt") as f:
        meta, t = {**f.metadata(), **metadata}, {k: f.get_tensor(k) for k in f.keys()}
    tensors(t)
    save_file({k: v.contiguous() for k, v in t.items()}, str(path), metadata=meta)
    return path


def _all(t: dict, f) -> None:
    for k in t:
        t[k] = f(t[k])


@pytest.mark.parametrize("tensors, metadata, problem", [
    (lambda t: _all(t, lambda v: v[:0].clone()), {}, "0 Gaussians"),
    (lambda t: _all(t, torch.Tensor.half), {}, "means is torch.float16, not float32 or float64"),
    (lambda t: t.update(means=t["means"].round().int()), {}, "means is torch.int32"),
    (lambda t: t["quats"].zero_(), {}, "quaternion of zero norm"),
    (lambda t: t["scales"].fill_(100.0), {}, "exponential overflows"),
    (lambda t: None, {"sh_degree": "-2"}, "SH degree -2"),
    (lambda t: None, {"sh_degree": "7"}, "SH degree 7"),
    (lambda t: None, {"background": "[NaN, NaN, NaN]"}, "background must be 3 values in [0, 1]"),
    (lambda t: None, {"background": "[50, -3, 1e30]"}, "background must be 3 values in [0, 1]"),
])
def test_scenes_that_cannot_render_are_refused(tmp_path: Path, tensors, metadata: dict, problem: str) -> None:
    """A scene file from outside (a bundle's) loads only if it renders: each of these gave a
    render of NaN or nothing, or an error at every inspection."""
    with pytest.raises(SceneError, match=re.escape(problem)):
        GaussianScene.load(_rewritten(tmp_path / "s.safetensors", tensors, **metadata))


def test_a_float64_scene_loads_as_float32(tmp_path: Path) -> None:
    back = GaussianScene.load(_rewritten(tmp_path / "s.safetensors", lambda t: _all(t, torch.Tensor.double)))
    assert back.means.dtype == torch.float32 and torch.equal(back.means, random_scene(10).means)


def test_render_depth_and_background() -> None:
    scene = random_scene(500, seed=3)
    vm, K = _cam()
    out = render(scene, vm, K, 32, 32, with_depth=True, background=(0.0, 0.0, 0.0))
    assert out.colors.shape == (1, 32, 32, 3) and out.depths.shape == (1, 32, 32, 1)
    covered = out.alphas[..., 0] > 0.5
    dist = camera.camera_center(vm.double()).norm().item()
    assert covered.any()
    d = out.depths[..., 0][covered]
    assert (d > dist - 1.0).all() and (d < dist + 1.0).all()  # the ball of radius 0.8 around the origin
    empty = out.alphas[..., 0] < 1e-6
    if empty.any():
        assert torch.all(out.colors[empty] == 0)
