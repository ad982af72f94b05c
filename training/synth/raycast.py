"""An analytic ray caster for the synthetic categories, independent of the Gaussian renderer.

Scenes are made of three primitive kinds, each intersected in closed form: axis-aligned
boxes, z-aligned finite cylinders (with caps) and spheres. Primitives are grouped into
parts with an axis-aligned bounding box; each part is only intersected with the rays
inside the screen rectangle its box projects to, which keeps a few hundred primitives
cheap. Cameras follow ``models.camera`` (world-to-camera, OpenCV axes, pixel centres at
+0.5). Shading is Lambertian under lights fixed in the world, so the appearance of a
surface point does not depend on the viewpoint (what a degree-0 Gaussian model can fit).

Outputs per sub-pixel sample: ray depth ``t``, primitive id, world hit point and normal;
:func:`shade` turns them into colours and :func:`downsample` averages the samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor

NO_HIT = -1

# Lights fixed in the world frame (z up): (direction towards the light, intensity).
LIGHTS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((0.45, -0.35, 0.82), 0.55),
    ((-0.6, 0.55, 0.35), 0.25),
    ((0.1, 0.3, -0.95), 0.15),
)
AMBIENT = 0.38


@dataclass
class Primitive:
    """One analytic primitive. ``kind`` is "box", "cylinder" or "sphere".

    box: ``lo``/``hi`` corners. cylinder: ``center`` (x, y of the axis, z unused),
    ``radius``, ``z0``/``z1``. sphere: ``center`` and ``radius``.
    """

    kind: str
    color: tuple[float, float, float]
    lo: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hi: tuple[float, float, float] = (0.0, 0.0, 0.0)
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 0.0
    z0: float = 0.0
    z1: float = 0.0

    def bounds(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        if self.kind == "box":
            return self.lo, self.hi
        cx, cy, cz = self.center
        r = self.radius
        if self.kind == "cylinder":
            return (cx - r, cy - r, self.z0), (cx + r, cy + r, self.z1)
        return (cx - r, cy - r, cz - r), (cx + r, cy + r, cz + r)

    def scaled(self, offset: tuple[float, float, float], scale: float) -> Primitive:
        """The primitive after ``x -> (x + offset) * scale``."""

        def tr(p: tuple[float, float, float]) -> tuple[float, float, float]:
            return tuple((p[i] + offset[i]) * scale for i in range(3))  # type: ignore[return-value]

        return Primitive(
            self.kind,
            self.color,
            lo=tr(self.lo),
            hi=tr(self.hi),
            center=tr(self.center),
            radius=self.radius * scale,
            z0=(self.z0 + offset[2]) * scale,
            z1=(self.z1 + offset[2]) * scale,
        )


@dataclass(frozen=True)
class SolidTexture:
    """A print on every surface, defined in 3D so every view sees the same pattern (what
    structure-from-motion needs to match photos): the base colour is scaled by
    ``1 + amplitude * tanh(2 * sum_k sin(w_k . x + phase_k) / sqrt(n))`` at world point ``x``."""

    waves: Tensor  # [n, 3] wave vectors (radians per scene unit)
    phases: Tensor  # [n]
    amplitude: float  # in (0, 1)

    def modulate(self, base: Tensor, point: Tensor) -> Tensor:
        signal = torch.sin(point.float() @ self.waves.T.float() + self.phases.float()).sum(-1)
        pattern = torch.tanh(2.0 * signal / len(self.phases) ** 0.5)
        return base * (1.0 + self.amplitude * pattern[..., None])


@dataclass
class Scene:
    """Primitives with stable integer ids, grouped into parts; optionally a solid texture."""

    prims: dict[int, Primitive] = field(default_factory=dict)
    parts: dict[str, list[int]] = field(default_factory=dict)
    texture: SolidTexture | None = None

    def add(self, part: str, prim: Primitive) -> int:
        pid = max(self.prims, default=-1) + 1
        self.prims[pid] = prim
        self.parts.setdefault(part, []).append(pid)
        return pid

    def without(self, prim_ids: set[int]) -> Scene:
        """A copy without the given primitives (ids of the others are kept)."""
        out = Scene(texture=self.texture)
        out.prims = {k: v for k, v in self.prims.items() if k not in prim_ids}
        out.parts = {
            name: [i for i in ids if i not in prim_ids] for name, ids in self.parts.items()
        }
        out.parts = {name: ids for name, ids in out.parts.items() if ids}
        return out

    def with_prims(self, part: str, prims: list[Primitive]) -> tuple[Scene, list[int]]:
        """A copy with extra primitives in a new part; returns it and their ids."""
        out = Scene(dict(self.prims), {k: list(v) for k, v in self.parts.items()}, self.texture)
        return out, [out.add(part, p) for p in prims]


@dataclass
class Hits:
    """Per-sample ray-cast results on the supersampled grid ``[H*ss, W*ss]``."""

    t: Tensor  # [Hs, Ws] ray depth (inf where nothing is hit)
    prim: Tensor  # [Hs, Ws] int64 primitive id, NO_HIT for background
    point: Tensor  # [Hs, Ws, 3] world hit point (undefined where not hit)
    normal: Tensor  # [Hs, Ws, 3] unit world normal (undefined where not hit)
    ss: int  # supersampling factor per axis


def camera_rays(w2c: Tensor, K: Tensor, width: int, height: int, ss: int) -> tuple[Tensor, Tensor]:
    """Ray origin [3] and unit directions [H*ss, W*ss, 3] (world frame) of an ss x ss grid
    of samples per pixel, placed at the centres of the sub-pixel cells."""
    dtype = torch.float32
    us = (torch.arange(width * ss, dtype=torch.float64) + 0.5) / ss
    vs = (torch.arange(height * ss, dtype=torch.float64) + 0.5) / ss
    v, u = torch.meshgrid(vs, us, indexing="ij")
    K = K.to(torch.float64)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    rot = w2c[:3, :3].to(torch.float64)
    dirs = dirs_cam @ rot  # R^T applied to row vectors
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origin = -(rot.T @ w2c[:3, 3].to(torch.float64))
    return origin.to(dtype), dirs.to(dtype)


def _intersect(prim: Primitive, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest positive hit of rays (origin o [3], directions d [R, 3]) with one primitive:
    depth [R] (inf for a miss) and outward normal [R, 3]."""
    inf = torch.full(d.shape[:1], float("inf"))
    eps = 1e-6
    if prim.kind == "box":
        lo, hi = torch.tensor(prim.lo), torch.tensor(prim.hi)
        with torch.no_grad():
            inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t1, t2 = (lo - o) * inv, (hi - o) * inv
        tnear, tfar = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_enter, axis = tnear.max(dim=-1)
        t_exit = tfar.min(dim=-1).values
        hit = (t_enter <= t_exit) & (t_enter > eps)
        normal = torch.zeros_like(d)
        normal.scatter_(1, axis[:, None], -torch.sign(torch.gather(d, 1, axis[:, None])))
        return torch.where(hit, t_enter, inf), normal
    if prim.kind == "sphere":
        c = torch.tensor(prim.center)
        oc = o - c
        b = d @ oc
        disc = b * b - (oc @ oc - prim.radius**2)
        t = -b - torch.sqrt(disc.clamp_min(0.0))
        hit = (disc >= 0) & (t > eps)
        point = o + t[:, None] * d
        return torch.where(hit, t, inf), (point - c) / prim.radius
    if prim.kind == "cylinder":
        cx, cy = prim.center[0], prim.center[1]
        ox, oy, oz = o[0] - cx, o[1] - cy, o[2]
        dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
        a = (dx * dx + dy * dy).clamp_min(1e-12)
        b = dx * ox + dy * oy
        disc = b * b - a * (ox * ox + oy * oy - prim.radius**2)
        t_side = (-b - torch.sqrt(disc.clamp_min(0.0))) / a
        z_side = oz + t_side * dz
        side_ok = (disc >= 0) & (t_side > eps) & (z_side >= prim.z0) & (z_side <= prim.z1)
        t_side = torch.where(side_ok, t_side, inf)
        safe_dz = torch.where(dz.abs() < 1e-12, torch.full_like(dz, 1e-12), dz)
        best_t, best_n = t_side, torch.stack([ox + t_side * dx, oy + t_side * dy, torch.zeros_like(dx)], -1)
        best_n = best_n / prim.radius
        for z_cap, nz in ((prim.z1, 1.0), (prim.z0, -1.0)):
            t_cap = (z_cap - oz) / safe_dz
            px, py = ox + t_cap * dx, oy + t_cap * dy
            cap_ok = (t_cap > eps) & (px * px + py * py <= prim.radius**2)
            t_cap = torch.where(cap_ok, t_cap, inf)
            closer = t_cap < best_t
            best_t = torch.where(closer, t_cap, best_t)
            cap_n = torch.tensor([0.0, 0.0, nz]).expand_as(best_n)
            best_n = torch.where(closer[:, None], cap_n, best_n)
        return best_t, best_n
    raise ValueError(f"unknown primitive kind {prim.kind!r}")


def cast(scene: Scene, w2c: Tensor, K: Tensor, width: int, height: int, ss: int = 2) -> Hits:
    """Ray-cast ``scene`` from one camera on an ``ss x ss`` sample grid per pixel."""
    origin, dirs = camera_rays(w2c, K, width, height, ss)
    hs, ws = dirs.shape[:2]
    flat_dirs = dirs.reshape(-1, 3)
    t_buf = torch.full((hs * ws,), float("inf"))
    id_buf = torch.full((hs * ws,), NO_HIT, dtype=torch.int64)
    n_buf = torch.zeros(hs * ws, 3)
    rot = w2c[:3, :3].to(torch.float64)
    trans = w2c[:3, 3].to(torch.float64)
    K64 = K.to(torch.float64)
    for ids in scene.parts.values():
        rect = _screen_rect(scene, ids, rot, trans, K64, width, height, ss)
        if rect is None:
            continue
        r0, r1, c0, c1 = rect
        rows = torch.arange(r0, r1)
        cols = torch.arange(c0, c1)
        idx = (rows[:, None] * ws + cols[None, :]).reshape(-1)
        d = flat_dirs[idx]
        for pid in ids:
            t, normal = _intersect(scene.prims[pid], origin, d)
            closer = t < t_buf[idx]
            if not bool(closer.any()):
                continue
            sel = idx[closer]
            t_buf[sel] = t[closer]
            id_buf[sel] = pid
            n_buf[sel] = normal[closer]
    point = origin + t_buf[:, None].clamp_max(1e6) * flat_dirs
    return Hits(
        t=t_buf.reshape(hs, ws),
        prim=id_buf.reshape(hs, ws),
        point=point.reshape(hs, ws, 3),
        normal=n_buf.reshape(hs, ws, 3),
        ss=ss,
    )


def _screen_rect(
    scene: Scene, ids: list[int], rot: Tensor, trans: Tensor, K: Tensor, width: int, height: int, ss: int
) -> tuple[int, int, int, int] | None:
    """Sample-grid rectangle (row0, row1, col0, col1) covering the part's projected box."""
    los, his = zip(*(scene.prims[i].bounds() for i in ids))
    lo = torch.tensor(los, dtype=torch.float64).min(0).values
    hi = torch.tensor(his, dtype=torch.float64).max(0).values
    corners = torch.stack(
        [torch.stack([(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    )
    cam = corners @ rot.T + trans
    if bool((cam[:, 2] <= 1e-6).any()):  # part straddles the camera plane: test every ray
        return 0, height * ss, 0, width * ss
    uv = cam[:, :2] / cam[:, 2:3] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    c0 = max(int(torch.floor(uv[:, 0].min() * ss)) - 1, 0)
    c1 = min(int(torch.ceil(uv[:, 0].max() * ss)) + 1, width * ss)
    r0 = max(int(torch.floor(uv[:, 1].min() * ss)) - 1, 0)
    r1 = min(int(torch.ceil(uv[:, 1].max() * ss)) + 1, height * ss)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def albedo(scene: Scene, hits: Hits, background: tuple[float, float, float]) -> Tensor:
    """Per-sample base colour [Hs, Ws, 3] (the background colour where nothing is hit)."""
    ids = sorted(scene.prims)
    table = torch.tensor([background] + [scene.prims[i].color for i in ids], dtype=torch.float32)
    lookup = torch.zeros(max(ids, default=0) + 2, dtype=torch.int64)
    lookup[torch.tensor(ids, dtype=torch.int64) + 1] = torch.arange(1, len(ids) + 1)
    base = table[lookup[hits.prim + 1]]
    if scene.texture is not None:
        base = torch.where((hits.prim == NO_HIT)[..., None], base, scene.texture.modulate(base, hits.point))
    return base


def shade(base: Tensor, hits: Hits, background: tuple[float, float, float]) -> Tensor:
    """Lambertian shading under the fixed world lights: colour [Hs, Ws, 3] in [0, 1]."""
    light = torch.full(hits.t.shape, AMBIENT)
    for direction, intensity in LIGHTS:
        ldir = torch.tensor(direction)
        ldir = ldir / ldir.norm()
        light = light + intensity * (hits.normal @ ldir).clamp_min(0.0)
    colour = (base * light[..., None]).clamp(0.0, 1.0)
    bg = torch.tensor(background, dtype=torch.float32)
    return torch.where((hits.prim == NO_HIT)[..., None], bg, colour)


def downsample(samples: Tensor, ss: int) -> Tensor:
    """Average ss x ss blocks: [H*ss, W*ss, C] -> [H, W, C] (box filter = pixel coverage)."""
    hs, ws = samples.shape[:2]
    return samples.reshape(hs // ss, ss, ws // ss, ss, -1).mean(dim=(1, 3))
