"""The CPU rasterizer against a literal per-pixel reference written here, gradcheck, and
CPU-versus-gsplat parity where CUDA exists."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models import camera
from models.splat import cpu_kernels as kernels
from models.splat import projection
from models.splat.render import rasterization

W, H = 37, 29  # not multiples of the tile size on purpose


def _scene(n: int, seed: int, dtype=torch.float64, opaque: bool = False):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 1.6
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.25 + 0.02
    if opaque:
        opac = torch.rand(n, generator=g, dtype=dtype) * 0.05 + 0.95
        scales = scales + 0.3
    else:
        opac = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, colors


def _cameras(dtype=torch.float64):
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    eyes = torch.tensor([[3.0, 0.4, 1.0], [-0.5, -2.8, 1.6]], dtype=torch.float64)
    viewmats = camera.look_at(eyes, torch.zeros_like(eyes), up, roll=torch.tensor([0.0, 0.4], dtype=torch.float64))
    K = camera.intrinsics_from_fov(0.8, W, H)
    K[0, 2] += 1.3  # off-centre principal point exercises the asymmetric tangent clamp
    return viewmats.to(dtype), K.expand(2, 3, 3).to(dtype).clone()


def _reference(means, quats, scales, opac, colors, viewmats, Ks, bg, antialiased):
    """Literal gsplat 1.5.3 forward: per Gaussian projection, per pixel front-to-back loop."""
    means, quats, scales, opac, colors = (t.double().numpy() for t in (means, quats, scales, opac, colors))
    out = np.zeros((len(viewmats), H, W, 3))
    out_alpha = np.zeros((len(viewmats), H, W))
    for c in range(len(viewmats)):
        Vm, K = viewmats[c].double().numpy(), Ks[c].double().numpy()
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        proj = []
        for i in range(len(means)):
            w, x, y, z = quats[i] / np.linalg.norm(quats[i])
            R = np.array([
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ])
            cov = R @ np.diag(scales[i] ** 2) @ R.T
            p = Vm[:3, :3] @ means[i] + Vm[:3, 3]
            if p[2] <= 0.01:
                continue
            cov_c = Vm[:3, :3] @ cov @ Vm[:3, :3].T
            limx_p = (W - cx) / fx + 0.3 * 0.5 * W / fx
            limx_n = cx / fx + 0.3 * 0.5 * W / fx
            limy_p = (H - cy) / fy + 0.3 * 0.5 * H / fy
            limy_n = cy / fy + 0.3 * 0.5 * H / fy
            tx = p[2] * min(max(p[0] / p[2], -limx_n), limx_p)
            ty = p[2] * min(max(p[1] / p[2], -limy_n), limy_p)
            J = np.array([[fx / p[2], 0, -fx * tx / p[2] ** 2], [0, fy / p[2], -fy * ty / p[2] ** 2]])
            cov2 = J @ cov_c @ J.T
            det0 = np.linalg.det(cov2)
            cov2 = cov2 + 0.3 * np.eye(2)
            det = np.linalg.det(cov2)
            o = opac[i] * (math.sqrt(max(det0 / det, 0.0)) if antialiased else 1.0)
            if o < 1 / 255:
                continue
            inv = np.linalg.inv(cov2)
            mu = np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
            proj.append((p[2], mu, inv, o, colors[i]))
        proj.sort(key=lambda e: e[0])
        for v in range(H):
            for u in range(W):
                T, col = 1.0, np.zeros(3)
                for _, mu, inv, o, rgb in proj:
                    d = mu - np.array([u + 0.5, v + 0.5])
                    sigma = 0.5 * (inv[0, 0] * d[0] ** 2 + inv[1, 1] * d[1] ** 2) + inv[0, 1] * d[0] * d[1]
                    if sigma < 0:
                        continue
                    alpha = min(0.999, o * math.exp(-sigma))
                    if alpha < 1 / 255:
                        continue
                    if T * (1 - alpha) <= 1e-4:
                        break
                    col += rgb * alpha * T
                    T *= 1 - alpha
                out[c, v, u] = col + T * bg
                out_alpha[c, v, u] = 1 - T
    return out, out_alpha


@pytest.mark.parametrize("path", ["compiled", "autograd"])
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
@pytest.mark.parametrize("opaque", [False, True], ids=["translucent", "hits-transmittance-stop"])
def test_matches_literal_reference(mode: str, opaque: bool, path: str) -> None:
    """Both CPU paths: the compiled kernels (no gradient wanted) and the differentiable one."""
    scene = _scene(40, seed=1 if opaque else 2, opaque=opaque)
    viewmats, Ks = _cameras()
    bg = np.array([1.0, 1.0, 1.0])
    ref, ref_alpha = _reference(*scene, viewmats, Ks, bg, mode == "antialiased")
    if opaque:  # the scene must really drive transmittance below the stop threshold
        assert (ref_alpha > 1 - 2e-4).mean() > 0.05
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        args = [t.to(dtype) for t in scene]
        args[4].requires_grad_(path == "autograd")
        colors, alphas, meta = rasterization(
            *args, viewmats.to(dtype), Ks.to(dtype), W, H,
            backgrounds=torch.ones(2, 3, dtype=dtype), rasterize_mode=mode,
        )
        assert colors.shape == (2, H, W, 3) and alphas.shape == (2, H, W, 1)
        assert colors.dtype == dtype and colors.requires_grad == (path == "autograd")
        np.testing.assert_allclose(colors.detach().double().numpy(), ref, atol=tol, rtol=0)
        np.testing.assert_allclose(alphas[..., 0].detach().double().numpy(), ref_alpha, atol=tol, rtol=0)
    assert meta["radii"].shape == (2, 40, 2) and meta["n_cameras"] == 2


def test_threads_do_not_change_the_compiled_image() -> None:
    """The compiled path deals a camera's tiles to torch's thread count: any count, one image."""
    scene = _scene(300, seed=9)
    viewmats, Ks = _cameras()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, one_alpha, _ = rasterization(*scene, viewmats, Ks, 64, 48)
        torch.set_num_threads(3)
        three, three_alpha, _ = rasterization(*scene, viewmats, Ks, 64, 48)
    finally:
        torch.set_num_threads(threads)
    assert (one_alpha > 0.5).float().mean() > 0.2  # the scene covers many tiles
    assert torch.equal(one, three) and torch.equal(one_alpha, three_alpha)


def test_inference_path_matches_the_autograd_path() -> None:
    """Without autograd the projection is compiled too: the same image, pixel by pixel."""
    scene = _scene(60, seed=6, opaque=True)
    viewmats, Ks = _cameras()
    fast, fast_alpha, _ = rasterization(*scene, viewmats, Ks, W, H, backgrounds=torch.ones(2, 3, dtype=torch.float64))
    colours = scene[4].clone().requires_grad_(True)
    slow, slow_alpha, _ = rasterization(*scene[:4], colours, viewmats, Ks, W, H,
                                        backgrounds=torch.ones(2, 3, dtype=torch.float64))
    assert slow.requires_grad and not fast.requires_grad
    assert torch.allclose(fast, slow.detach(), atol=1e-12)
    assert torch.allclose(fast_alpha, slow_alpha.detach(), atol=1e-12)


def test_tile_test_is_exact_against_brute_force() -> None:
    """``min_exponent`` never drops a Gaussian whose alpha reaches 1/255 at a pixel centre
    of the tile, and drops the ones whose bounding box alone would list them."""
    g = torch.Generator().manual_seed(3)
    n = 4000
    means2d = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 - 4
    a = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.05  # elongated and rotated ellipses
    c = torch.rand(n, generator=g, dtype=torch.float64) * 0.05 + 0.002
    th = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    cos, sin = torch.cos(th), torch.sin(th)
    conics = torch.stack([a * cos**2 + c * sin**2, (a - c) * cos * sin, a * sin**2 + c * cos**2], -1)
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.95 + 0.04
    tx = torch.randint(0, 4, (n,), generator=g)
    ty = torch.randint(0, 4, (n,), generator=g)
    limit = torch.log(255 * opac) + 1e-3  # bin_tiles' rule, its slack included
    fast = torch.tensor([kernels.min_exponent(*(float(v) for v in (means2d[i, 0], means2d[i, 1], *conics[i])),
                                              int(tx[i]), int(ty[i])) <= float(limit[i]) for i in range(n)])
    px = torch.arange(kernels.TILE, dtype=torch.float64) + 0.5
    dx = means2d[:, None, None, 0] - (tx[:, None, None] * kernels.TILE + px[None, None, :])
    dy = means2d[:, None, None, 1] - (ty[:, None, None] * kernels.TILE + px[None, :, None])
    sigma = 0.5 * conics[:, 0, None, None] * dx**2 + 0.5 * conics[:, 2, None, None] * dy**2 + conics[:, 1, None, None] * dx * dy
    brute = (opac[:, None, None] * torch.exp(-sigma)).amax((1, 2)) >= kernels.ALPHA_MIN
    assert brute.any() and (~brute).any()
    assert not (brute & ~fast).any()  # never drops a contributing Gaussian
    assert (fast & ~brute).sum() <= 0.01 * n  # and keeps almost no useless one (the tie slack)


def test_tile_lists_shrink_but_the_image_does_not_change() -> None:
    means, quats, scales, opac, colors = _scene(40, seed=8)
    scales = scales * torch.tensor([3.0, 0.2, 0.2], dtype=torch.float64)  # thin, so boxes overestimate
    viewmats, Ks = _cameras()
    covars = projection.quat_scale_to_covar(quats, scales)
    proj = projection.project(means, covars, opac, viewmats, Ks, W, H)
    n_tx, n_ty = math.ceil(W / kernels.TILE), math.ceil(H / kernels.TILE)
    args = [proj[k][0] for k in ("means2d", "radii", "depths", "conics", "opacities")]
    boxes, box_offsets = kernels.tile_lists(*args, n_tx, n_ty, exact=False)
    tight, tight_offsets = kernels.tile_lists(*args, n_tx, n_ty)
    assert len(tight) < len(boxes) and (tight_offsets.diff() <= box_offsets.diff()).all()
    image, _, _ = rasterization(means, quats, scales, opac, colors, viewmats, Ks, W, H)
    ref, _ = _reference(means, quats, scales, opac, colors, viewmats, Ks, np.zeros(3), False)
    np.testing.assert_allclose(image.numpy(), ref, atol=1e-9, rtol=0)


def test_depth_modes() -> None:
    """A single flat opaque Gaussian facing the camera: expected depth is its depth."""
    viewmats, Ks = _cameras()
    means = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    cam_dist = camera.camera_center(viewmats).norm(dim=-1)
    out, alpha, _ = rasterization(
        means, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), torch.full((1, 3), 0.3, dtype=torch.float64),
        torch.tensor([0.9], dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), viewmats, Ks, W, H,
        render_mode="RGB+ED", backgrounds=torch.zeros(2, 3, dtype=torch.float64),
    )
    assert out.shape == (2, H, W, 4)
    covered = alpha[..., 0] > 0.05
    np.testing.assert_allclose(out[..., 3][covered[0:1].expand(2, -1, -1) & covered].numpy().max(), cam_dist.max(), rtol=1e-6)
    depth_only, _, _ = rasterization(
        means, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), torch.full((1, 3), 0.3, dtype=torch.float64),
        torch.tensor([0.9], dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), viewmats, Ks, W, H,
        render_mode="D",
    )
    assert depth_only.shape == (2, H, W, 1)
    assert torch.allclose(depth_only[0, ..., 0], out[0, ..., 3] * alpha[0, ..., 0], atol=1e-9)


def test_sh_degree_zero_matches_plain_colours() -> None:
    scene = list(_scene(20, seed=7))
    viewmats, Ks = _cameras()
    rgb = scene[4]
    sh0 = ((rgb - 0.5) / 0.28209479177387814)[:, None, :]
    plain, _, _ = rasterization(*scene, viewmats, Ks, W, H)
    scene[4] = sh0
    via_sh, _, _ = rasterization(*scene, viewmats, Ks, W, H, sh_degree=0)
    assert torch.allclose(plain, via_sh, atol=1e-9)


@pytest.mark.parametrize("opaque", [False, True], ids=["translucent", "hits-transmittance-stop"])
def test_gradcheck_tiny_scene(opaque: bool) -> None:
    """The compiled backward pass against finite differences, through the projection, for the
    colours and the alphas, with a background; the opaque scene stops pixels early."""
    means, quats, scales, opac, colors = _scene(12 if opaque else 5, seed=9, opaque=opaque)
    viewmats, Ks = _cameras()
    w, h = 9, 7
    Ks = Ks.clone()
    Ks[:, 0, 2], Ks[:, 1, 2] = w / 2, h / 2
    Ks[:, 0, 0] = Ks[:, 1, 1] = 12.0
    params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
    background = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)

    def fn(m, q, s, o, c, bg):
        out, alpha, _ = rasterization(m, q, s, o, c, viewmats, Ks, w, h, backgrounds=bg)
        return out, alpha

    if opaque:  # some pixel must stop on the transmittance
        _, alpha = fn(*params, background)
        assert (alpha > 1 - 2e-4).any()
    assert torch.autograd.gradcheck(fn, [*params, background], eps=1e-6, atol=1e-5, rtol=1e-4)


def test_threads_do_not_change_the_gradient() -> None:
    """The backward pass deals tiles to threads, each with its own gradient buffer."""
    scene = _scene(300, seed=10)
    viewmats, Ks = _cameras()
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            params = [t.clone().requires_grad_(True) for t in scene]
            out, alpha, meta = rasterization(*params, viewmats, Ks, 64, 48, backgrounds=torch.ones(2, 3, dtype=torch.float64))
            meta["means2d"].retain_grad()
            ((out - 0.5) ** 2).sum().backward()
            grads.append([t.grad for t in params] + [meta["means2d"].grad])
    finally:
        torch.set_num_threads(threads)
    assert (alpha > 0.5).float().mean() > 0.2
    for one, three in zip(*grads):
        assert one.abs().max() > 0
        torch.testing.assert_close(one, three, rtol=1e-10, atol=1e-12)


def test_means2d_gradient_for_densification() -> None:
    scene = [t.float().requires_grad_(True) for t in _scene(30, seed=4)]
    viewmats, Ks = _cameras(torch.float32)
    out, _, meta = rasterization(*scene, viewmats, Ks, W, H)
    meta["means2d"].retain_grad()
    out.sum().backward()
    grad = meta["means2d"].grad
    assert grad is not None and grad.shape == (2, 30, 2)
    visible = (meta["radii"] > 0).all(-1)
    assert grad[visible].abs().sum() > 0 and torch.all(grad[~visible] == 0)


def test_bad_modes_rejected() -> None:
    scene = _scene(3, seed=0)
    viewmats, Ks = _cameras()
    with pytest.raises(ValueError):
        rasterization(*scene, viewmats, Ks, W, H, render_mode="XYZ")
    with pytest.raises(ValueError):
        rasterization(*scene, viewmats, Ks, W, H, rasterize_mode="fancy")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat kernels)")
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_cpu_matches_gsplat_cuda(mode: str) -> None:
    """Images without a gradient (compiled kernels), then the gradient the CPU fit uses (tensor
    projection, compiled backward pass), against gsplat's."""
    scene = [t.float() for t in _scene(500, seed=11)]
    viewmats, Ks = _cameras(torch.float32)
    bg = torch.ones(2, 3)
    cpu, cpu_a, _ = rasterization(*scene, viewmats, Ks, W, H, backgrounds=bg, rasterize_mode=mode)
    gpu, gpu_a, _ = rasterization(
        *[t.cuda() for t in scene], viewmats.cuda(), Ks.cuda(), W, H, backgrounds=bg.cuda(), rasterize_mode=mode
    )
    assert (cpu - gpu.cpu()).abs().max() < 1e-4
    assert (cpu_a - gpu_a.cpu()).abs().max() < 1e-4
    weights = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(0))
    grads = []
    for device in ("cpu", "cuda"):
        params = [t.to(device).requires_grad_(True) for t in scene]
        out, alpha, _ = rasterization(*params, viewmats.to(device), Ks.to(device), W, H,
                                      backgrounds=bg.to(device), rasterize_mode=mode)
        ((out * weights.to(device)).sum() + alpha.sum()).backward()
        grads.append([t.grad.cpu() for t in params])
    for on_cpu, on_gpu in zip(*grads):
        assert on_gpu.abs().max() > 0
        assert (on_cpu - on_gpu).abs().max() <= 1e-3 * on_gpu.abs().max() + 1e-5


def test_kernels_compile_where_no_cache_can_be_written() -> None:
    """numba refuses ``cache=True`` where it finds no writable cache location (here: source
    without a file); the kernels' decorator then compiles without a cache instead of failing
    at import."""
    import numba

    namespace: dict = {}
    exec("def add_one(x):\n    return x + 1\n", namespace)  # noqa: S102 (a function with no source file)
    with pytest.raises(RuntimeError, match="no locator"):
        numba.njit(cache=True)(namespace["add_one"])
    assert kernels._jit(namespace["add_one"])(41) == 42


def test_warm_renders_what_the_pipeline_renders() -> None:
    """``warm`` (run at image build time) goes through the same kernels as a render: in a
    fresh interpreter, a float32 render after it compiles no new signature."""
    import subprocess
    import sys

    code = ("import torch; from models.splat import cpu_kernels as k; from models.splat.render import rasterization; "
            "k.warm(); fns = (k.project, k.bin_tiles, k.composite); n = [len(f.signatures) for f in fns]; "
            "g = torch.Generator().manual_seed(0); m = torch.rand(50, 3, generator=g) - 0.5; "
            "V = torch.eye(4)[None].clone(); V[0, 2, 3] = 3.0; K = torch.tensor([[[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]]]); "
            "img, _, _ = rasterization(m, torch.randn(50, 4, generator=g), torch.full((50, 3), 0.05), torch.full((50,), 0.8), "
            "torch.rand(50, 3, generator=g), V, K, 32, 24, backgrounds=torch.ones(1, 3)); "
            "print(min(n) > 0 and n == [len(f.signatures) for f in fns] and bool(img.lt(0.99).any()))")
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
