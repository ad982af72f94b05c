"""`rpe-pad synth`: procedural LEGO-like categories in MAD-Sim layout, with exact masks.

An object is a base plate with bricks, plates and round bricks stacked on it (studs on
every exposed top cell, several colours), centred on the origin and scaled to a radius of
about 1. Training cameras sit on elevation rings around it like MAD's; query cameras sit
at other poses with a random roll about the optical axis. Defects are made in 3D, so each
is consistent with the geometry, and their masks come from the ray caster's hit buffers:

* Stains: surface points within a small blob of spheres change colour (mask: visible
  samples inside the blob).
* Missing: a stud or a top brick is removed (mask: samples that saw the removed part).
* Burrs: a short chain of small spheres sticks out of the surface along its normal
  (mask: samples that see the burr).

A pixel is defective when at least half of its sub-samples are. Output is deterministic
for a given seed and set of arguments.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from models import camera
from models.images import save_rgb
from training.synth import raycast as rc
from training.synth.raycast import Primitive, Scene

CAMERA_ANGLE_X = 0.6911112070083618  # MAD-Sim's horizontal field of view (radians)
BACKGROUND = (1.0, 1.0, 1.0)
VISIBLE_CHANGE = 0.03  # per-channel difference that counts as a visible change
OBJECT_RADIUS = 1.15  # half-diagonal of the object's bounding box (scene units)
DEFECT_TYPES = ("Stains", "Missing", "Burrs")
FORMAT_VERSION = 1

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.10),
    "blue": (0.08, 0.32, 0.72),
    "yellow": (0.96, 0.78, 0.12),
    "green": (0.12, 0.56, 0.22),
    "orange": (0.95, 0.48, 0.08),
    "dark_grey": (0.32, 0.34, 0.37),
    "light_grey": (0.64, 0.66, 0.68),
    "tan": (0.82, 0.72, 0.52),
    "black": (0.13, 0.13, 0.14),
}
BASE_COLOURS = ("green", "dark_grey", "light_grey", "tan", "blue")
STAIN_COLOURS = ((0.35, 0.22, 0.08), (0.10, 0.10, 0.10), (0.90, 0.90, 0.30), (0.70, 0.10, 0.55))

# LEGO proportions in stud pitches.
BRICK_H, PLATE_H, STUD_R, STUD_H = 1.2, 0.4, 0.3, 0.2
SIZES = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4))


@dataclass
class SynthConfig:
    """Arguments of `rpe-pad synth` (saved to ``synth.json``)."""

    seed: int = 0  # RNG seed: same seed and arguments -> same files
    size: int = 256  # image width and height in pixels
    train_views: int = 100  # views on elevation rings
    test_views: int = 40  # query views, about a quarter good, the rest split over the defect types
    supersample: int = 2  # ray-cast samples per pixel per axis (antialiasing, mask coverage)
    elevation_deg: tuple[float, float] = (-30.0, 80.0)  # camera elevation range
    radius: tuple[float, float] = (3.6, 4.2)  # camera distance from the origin
    max_roll_deg: float = 15.0  # query cameras roll uniformly within +-this about the optical axis
    min_defect_frac: float = 0.001  # defect mask area bounds, as fractions of the image
    max_defect_frac: float = 0.06
    min_visible_change: float = 0.5  # at least this fraction of a mask must visibly change
    texture: float = 0.0  # amplitude of a pattern printed on every surface (0: plain colours); photos
    # of a textured object are what structure-from-motion matches (`rpe-pad prepare`'s tests)


@dataclass
class Element:
    """A brick, plate or round brick of the object (in stud units before scaling)."""

    name: str
    shape: str  # "brick" | "plate" | "round"
    colour: str
    x0: int
    y0: int
    w: int
    d: int
    z0: float
    z1: float
    body: list[int] = field(default_factory=list)  # primitive ids
    studs: list[int] = field(default_factory=list)
    exposed: bool = False  # nothing stacked on it: removable as a whole


@dataclass
class SynthObject:
    scene: Scene
    elements: list[Element]


def build_object(rng: np.random.Generator) -> SynthObject:
    """A random LEGO-like object centred on the origin, its bounding box's half-diagonal
    ``OBJECT_RADIUS``."""
    base_w, base_d = int(rng.integers(5, 9)), int(rng.integers(4, 7))
    height = np.full((base_w, base_d), PLATE_H)
    elements = [
        Element("base", "plate", str(rng.choice(BASE_COLOURS)), 0, 0, base_w, base_d, 0.0, PLATE_H)
    ]
    n_target = int(rng.integers(6, 11))
    tries = 0
    while len(elements) - 1 < n_target and tries < 200:
        tries += 1
        shape = str(rng.choice(["brick", "plate", "round"], p=[0.65, 0.15, 0.2]))
        if shape == "round":
            w = d = int(rng.choice([1, 2]))
        else:
            w, d = SIZES[int(rng.integers(len(SIZES)))]
            if rng.random() < 0.5:
                w, d = d, w
        if w > base_w or d > base_d:
            continue
        x0, y0 = int(rng.integers(0, base_w - w + 1)), int(rng.integers(0, base_d - d + 1))
        z0 = float(height[x0 : x0 + w, y0 : y0 + d].max())
        if z0 > 3.5 * BRICK_H:
            continue
        z1 = z0 + (PLATE_H if shape == "plate" else BRICK_H)
        colour = str(rng.choice([c for c in PALETTE if c != elements[0].colour]))
        height[x0 : x0 + w, y0 : y0 + d] = z1
        elements.append(Element(f"el{len(elements)}", shape, colour, x0, y0, w, d, z0, z1))

    raw = Scene()
    for el in elements:
        colour = PALETTE[el.colour]
        top = height[el.x0 : el.x0 + el.w, el.y0 : el.y0 + el.d]
        el.exposed = bool(np.all(np.isclose(top, el.z1)))
        if el.shape == "round":
            cx, cy = el.x0 + el.w / 2, el.y0 + el.d / 2
            radius = 0.48 * el.w
            el.body.append(raw.add(el.name, Primitive("cylinder", colour, center=(cx, cy, 0.0), radius=radius, z0=el.z0, z1=el.z1)))
            if el.exposed:
                el.studs.append(raw.add(el.name, _stud(colour, cx, cy, el.z1)))
            continue
        el.body.append(raw.add(el.name, Primitive("box", colour, lo=(el.x0, el.y0, el.z0), hi=(el.x0 + el.w, el.y0 + el.d, el.z1))))
        for i in range(el.w):
            for j in range(el.d):
                if math.isclose(height[el.x0 + i, el.y0 + j], el.z1):
                    el.studs.append(raw.add(el.name, _stud(colour, el.x0 + i + 0.5, el.y0 + j + 0.5, el.z1)))

    lo = np.array([min(p.bounds()[0][k] for p in raw.prims.values()) for k in range(3)])
    hi = np.array([max(p.bounds()[1][k] for p in raw.prims.values()) for k in range(3)])
    centre = (lo + hi) / 2
    scale = OBJECT_RADIUS / (0.5 * float(np.linalg.norm(hi - lo)))
    offset = tuple(float(v) for v in -centre)
    scene = Scene({pid: p.scaled(offset, scale) for pid, p in raw.prims.items()}, raw.parts)
    return SynthObject(scene, elements)


def solid_texture(rng: np.random.Generator, amplitude: float, waves: int = 24) -> rc.SolidTexture:
    """Random plane waves with wavelengths of 0.08-0.3 scene units (a few pixels to a few
    tens of pixels at the cameras' distance): blobs that SIFT detects and matches."""
    directions = rng.normal(size=(waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(0.08, 0.3, size=waves)
    return rc.SolidTexture(
        waves=torch.from_numpy(directions * (2 * np.pi / wavelengths)[:, None]),
        phases=torch.from_numpy(rng.uniform(0, 2 * np.pi, size=waves)),
        amplitude=amplitude,
    )


def _stud(colour: tuple[float, float, float], x: float, y: float, z: float) -> Primitive:
    return Primitive("cylinder", colour, center=(x, y, 0.0), radius=STUD_R, z0=z, z1=z + STUD_H)


def ring_cameras(n: int, cfg: SynthConfig, rng: np.random.Generator) -> torch.Tensor:
    """``n`` training poses [n, 4, 4] on elevation rings (views per ring ~ cos(elevation)),
    full azimuth, looking at the origin with world z up."""
    n_rings = max(2, round(math.sqrt(n / 2.5)))
    elevs = np.deg2rad(np.linspace(*cfg.elevation_deg, n_rings))
    weights = np.cos(elevs)
    counts = np.floor(weights / weights.sum() * n).astype(int)
    for k in np.argsort(-(weights / weights.sum() * n - counts))[: n - counts.sum()]:
        counts[k] += 1
    eyes = []
    for elev, count in zip(elevs, counts):
        start = rng.uniform(0, 2 * math.pi)
        for az in start + np.arange(count) * 2 * math.pi / max(count, 1):
            eyes.append(_spherical(az, elev, rng.uniform(*cfg.radius)))
    return _look_at_origin(np.array(eyes), np.zeros(len(eyes)))


def query_cameras(n: int, cfg: SynthConfig, rng: np.random.Generator) -> torch.Tensor:
    """``n`` query poses [n, 4, 4]: random directions within the elevation range, random
    distance and a random roll about the optical axis."""
    lo, hi = np.sin(np.deg2rad(cfg.elevation_deg))
    eyes = [
        _spherical(rng.uniform(0, 2 * math.pi), math.asin(rng.uniform(lo, hi)), rng.uniform(*cfg.radius))
        for _ in range(n)
    ]
    rolls = np.deg2rad(rng.uniform(-cfg.max_roll_deg, cfg.max_roll_deg, size=n))
    return _look_at_origin(np.array(eyes), rolls)


def _spherical(az: float, elev: float, radius: float) -> list[float]:
    return [radius * math.cos(elev) * math.cos(az), radius * math.cos(elev) * math.sin(az), radius * math.sin(elev)]


def _look_at_origin(eyes: np.ndarray, rolls: np.ndarray) -> torch.Tensor:
    eye = torch.tensor(eyes, dtype=torch.float64).reshape(-1, 3)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return camera.look_at(eye, torch.zeros_like(eye), up, torch.tensor(rolls, dtype=torch.float64))


@dataclass
class Rendered:
    image: np.ndarray  # [H, W, 3] float32
    mask: np.ndarray  # [H, W] bool


def render(
    scene: Scene, w2c: torch.Tensor, K: torch.Tensor, size: int, ss: int, stain: tuple | None = None
) -> tuple[np.ndarray, rc.Hits, torch.Tensor | None]:
    """Image [H, W, 3] of ``scene``, its hits, and the per-sample stain mask when a stain
    ``(centres [k, 3], radii [k], colour)`` is given."""
    hits = rc.cast(scene, w2c, K, size, size, ss)
    base = rc.albedo(scene, hits, BACKGROUND)
    stained = None
    if stain is not None:
        centres, radii, colour = stain
        dist = (hits.point[:, :, None, :] - centres).norm(dim=-1)
        stained = ((dist <= radii).any(-1)) & (hits.prim != rc.NO_HIT)
        base = torch.where(stained[..., None], torch.tensor(colour, dtype=torch.float32), base)
    colour = rc.shade(base, hits, BACKGROUND)
    return rc.downsample(colour, ss).numpy(), hits, stained


def _pixel_mask(samples: torch.Tensor, ss: int) -> np.ndarray:
    """A pixel is defective when at least half of its sub-samples are."""
    return (rc.downsample(samples.float()[..., None], ss)[..., 0] >= 0.5).numpy()


def make_defect(
    obj: SynthObject,
    kind: str,
    w2c: torch.Tensor,
    K: torch.Tensor,
    normal: tuple[np.ndarray, rc.Hits],
    cfg: SynthConfig,
    rng: np.random.Generator,
) -> Rendered | None:
    """Render one defective view of ``kind`` seen from ``w2c``, given the normal object's
    image and hits from that camera; ``None`` when the drawn defect's visible area falls
    outside the configured bounds, or too little of its mask visibly differs from the
    normal view (a stud cap removed from a same-coloured brick), so the caller draws again."""
    normal_image, hits = normal
    size, ss = cfg.size, cfg.supersample
    visible = torch.nonzero(hits.prim != rc.NO_HIT)
    if len(visible) == 0:
        return None
    r, c = visible[int(rng.integers(len(visible)))].tolist()
    point, normal, prim_id = hits.point[r, c], hits.normal[r, c], int(hits.prim[r, c])

    if kind == "Stains":
        k = int(rng.integers(1, 4))
        radius0 = rng.uniform(0.07, 0.13)
        centres = point + torch.tensor(rng.normal(0, radius0 * 0.5, (k, 3)), dtype=torch.float32)
        centres[0] = point
        radii = torch.tensor(radius0 * rng.uniform(0.6, 1.0, k), dtype=torch.float32)
        base_colour = np.array(obj.scene.prims[prim_id].color)
        options = [s for s in STAIN_COLOURS if np.abs(np.array(s) - base_colour).sum() > 0.6]
        colour = options[int(rng.integers(len(options)))]
        image, _, stained = render(obj.scene, w2c, K, size, ss, stain=(centres, radii, colour))
        mask = _pixel_mask(stained, ss)
    elif kind == "Burrs":
        r0 = rng.uniform(0.035, 0.06)
        n = int(rng.integers(2, 5))
        drift = torch.tensor(rng.normal(0, 0.3, 3), dtype=torch.float32)
        direction = normal + drift - (drift @ normal) * normal
        direction = direction / direction.norm()
        colour = obj.scene.prims[prim_id].color
        burrs = [
            Primitive("sphere", colour, center=tuple((point + direction * r0 * (0.3 + 1.2 * i)).tolist()), radius=r0 * 0.8**i)
            for i in range(n)
        ]
        scene, burr_ids = obj.scene.with_prims("burr", burrs)
        image, defect_hits, _ = render(scene, w2c, K, size, ss)
        mask = _pixel_mask(torch.isin(defect_hits.prim, torch.tensor(burr_ids)), ss)
    elif kind == "Missing":
        seen = set(torch.unique(hits.prim).tolist())
        studs = [s for el in obj.elements for s in el.studs if s in seen]
        tops = [el for el in obj.elements[1:] if el.exposed and set(el.body) & seen]
        if tops and (not studs or rng.random() < 0.5):
            el = tops[int(rng.integers(len(tops)))]
            removed = set(el.body) | set(el.studs)
        elif studs:
            removed = {studs[int(rng.integers(len(studs)))]}
        else:
            return None
        image, _, _ = render(obj.scene.without(removed), w2c, K, size, ss)
        mask = _pixel_mask(torch.isin(hits.prim, torch.tensor(sorted(removed))), ss)
    else:
        raise ValueError(f"unknown defect type {kind!r}")
    frac = float(mask.mean())
    if not cfg.min_defect_frac <= frac <= cfg.max_defect_frac:
        return None
    changed = np.abs(image - normal_image).max(axis=-1) > VISIBLE_CHANGE
    if changed[mask].mean() < cfg.min_visible_change:
        return None
    return Rendered(image, mask)


def query_view(
    obj: SynthObject, label: str, K: torch.Tensor, cfg: SynthConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, Rendered]:
    """A query camera and its view: normal, or with a visible defect of type ``label``."""
    for _camera_try in range(50):
        w2c = query_cameras(1, cfg, rng)[0]
        image, hits, _ = render(obj.scene, w2c, K, cfg.size, cfg.supersample)
        if label == "good":
            return w2c, Rendered(image, np.zeros(image.shape[:2], bool))
        for _defect_try in range(8):
            result = make_defect(obj, label, w2c, K, (image, hits), cfg, rng)
            if result is not None:
                return w2c, result
    raise RuntimeError(f"synth: could not place a visible {label} defect in 400 attempts")


def query_labels(n: int) -> list[str]:
    n_good = max(1, round(n / 4)) if n > 0 else 0
    return ["good"] * n_good + [DEFECT_TYPES[i % 3] for i in range(n - n_good)]


def transforms_frame(file_path: str, w2c: torch.Tensor) -> dict:
    c2w = camera.opencv_w2c_to_opengl_c2w(w2c)
    return {"file_path": file_path, "transform_matrix": c2w.tolist()}


def generate(out_dir: str | Path, cfg: SynthConfig, progress: bool = True, made_by: str = "rpe-pad synth") -> Path:
    """Write a synthetic category to ``out_dir`` (created; must be empty or absent). It is written
    into a hidden sibling folder and renamed into place when whole, so a run that fails or is
    interrupted leaves ``out_dir`` as it was and the same command can run again."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: output folder is a file")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output folder exists and is not empty")
    problems = [f"{name} must be >= {least}, got {value}" for name, value, least in
                (("size", cfg.size, 16), ("train_views", cfg.train_views, 1), ("test_views", cfg.test_views, 0),
                 ("supersample", cfg.supersample, 1), ("seed", cfg.seed, 0)) if value < least]
    if not 0.0 <= cfg.texture < 1.0:
        problems.append(f"texture must be in [0, 1), got {cfg.texture}")
    if problems:
        raise ValueError("synth: " + "; ".join(problems))
    with written_whole(out) as partial:
        _write(partial, cfg, progress, out.name, made_by)
    return out


@contextmanager
def written_whole(out: Path):
    """A hidden sibling folder to write ``out`` into (``out`` absent or empty): renamed to ``out``
    when the block ends without an error, and removed either way, so a run that fails or is
    interrupted leaves ``out`` as it was. An empty ``out`` that is there already (the current
    folder, ``rpe-pad synth .``, a mounted volume) is kept and filled: the hidden folder is made
    inside it, and its parts renamed up into it, ``synth.json`` last."""
    out = out.resolve()  # "." has no name to make a sibling from, and cannot be replaced
    out.parent.mkdir(parents=True, exist_ok=True)
    there = out.is_dir()  # empty: the callers check it. Written inside it, so that it may be a mount point
    partial = (out / f".partial-{uuid.uuid4().hex[:8]}" if there
               else out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir()
    try:
        yield partial
        if there:
            for part in sorted(partial.iterdir(), key=lambda p: p.name == "synth.json"):
                part.rename(out / part.name)
        else:
            partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # nothing left once renamed


def synth_object(cfg: SynthConfig) -> tuple[SynthObject, np.random.Generator]:
    """The object ``rpe-pad synth`` builds from ``cfg`` (its seed and texture), and the random
    stream after it, from which the training cameras are drawn next."""
    rng = np.random.default_rng(cfg.seed)
    obj = build_object(rng)
    if cfg.texture > 0:  # its own stream: the untextured object and cameras stay as they were
        obj.scene.texture = solid_texture(np.random.default_rng([cfg.seed, 1]), cfg.texture)
    return obj, rng


def _write(out: Path, cfg: SynthConfig, progress: bool, name: str, made_by: str) -> None:
    obj, rng = synth_object(cfg)
    K = camera.intrinsics_from_fov(CAMERA_ANGLE_X, cfg.size, cfg.size)
    train_poses = ring_cameras(cfg.train_views, cfg, rng)
    labels = query_labels(cfg.test_views)

    (out / "train" / "good").mkdir(parents=True)
    bar = tqdm(total=len(train_poses) + len(labels), desc=f"synth {name}", disable=not progress)
    train_frames = []
    for i, w2c in enumerate(train_poses):
        image, _, _ = render(obj.scene, w2c, K, cfg.size, cfg.supersample)
        save_rgb(out / "train" / "good" / f"{i:03d}.png", image)
        train_frames.append(transforms_frame(f"train/good/{i:03d}", w2c))
        bar.update()
    _write_json(out / "train" / "transforms.json", {"camera_angle_x": CAMERA_ANGLE_X, "frames": train_frames})

    test_frames = write_queries(out, obj, K, cfg, rng, labels, bar)
    bar.close()
    if test_frames:
        _write_json(out / "test" / "transforms.json", {"camera_angle_x": CAMERA_ANGLE_X, "frames": test_frames})
    _write_json(
        out / "synth.json",
        {
            "generator": "rpe-pad synth",
            "made_by": made_by,  # the command that wrote it (the demo deletes only its own)
            "format_version": FORMAT_VERSION,
            "config": asdict(cfg),
            "elements": [
                {k: v for k, v in asdict(el).items() if k not in ("body", "studs")} for el in obj.elements
            ],
        },
    )


def write_queries(out: Path, obj: SynthObject, K: torch.Tensor, cfg: SynthConfig, rng: np.random.Generator,
                  labels: list[str], bar=None) -> list[dict]:
    """A query view of ``obj`` per label (``query_view``) into ``out/test/<label>/NNN.png``, each
    defect's mask into ``out/ground_truth/<label>/NNN_mask.png``; returns their transforms frames."""
    frames, counters = [], {}
    for label in labels:
        index = counters.get(label, 0)
        counters[label] = index + 1
        (out / "test" / label).mkdir(parents=True, exist_ok=True)
        w2c, result = query_view(obj, label, K, cfg, rng)
        save_rgb(out / "test" / label / f"{index:03d}.png", result.image)
        if label != "good":
            (out / "ground_truth" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(result.mask.astype(np.uint8) * 255).save(out / "ground_truth" / label / f"{index:03d}_mask.png")
        frames.append(transforms_frame(f"test/{label}/{index:03d}", w2c))
        if bar is not None:
            bar.update()
    return frames


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
