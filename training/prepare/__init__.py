"""`rpe-pad prepare`: a category from photographs of a normal object, without a pose file.

photos (EXIF orientation, checks) -> structure-from-motion (``sfm``: one shared camera) ->
the category's world frame (``frame``) -> undistortion to a pinhole camera -> object masks
and composites on white (``masks``) -> ``train/good/NNN.png`` + ``train/transforms.json``
in the MAD-Sim layout, which ``rpe-pad train`` reads as it is -> the readiness report
(``report``): ``prepare/readiness.json``, ``prepare/coverage.png``, ``prepare/masks.png``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from models import camera as cam
from models.bundle import check_category_name
from models.compression import compression_of
from models.images import Undistortion
from training.prepare import masks as mk
from training.prepare import report as rp
from training.prepare.frame import centres_and_axes, normalise
from training.prepare.photos import PrepareError, read_photos
from training.prepare.sfm import CAMERA_MODELS, NoStart, reconstruct

__all__ = ["CAMERA_MODELS", "PrepareConfig", "PrepareError", "prepare"]

UNDISTORT_PX = 0.1  # photos are undistorted when the lens moves the image corner by more than this


@dataclass
class PrepareConfig:
    """Arguments of `rpe-pad prepare` (saved in ``prepare/readiness.json``)."""

    camera_model: str = "SIMPLE_RADIAL"  # one camera for all photos: SIMPLE_RADIAL (a lens), SIMPLE_PINHOLE, RADIAL
    focal: float | None = None  # known focal length in pixels of the photos as stored (None: estimated)
    max_size: int = 1600  # photos larger than this on their long side are downscaled first
    threads: int = -1  # COLMAP's threads (-1: every core)


def prepare(photos_dir: str | Path, out_dir: str | Path, cfg: PrepareConfig | None = None,
            progress: bool = True) -> dict:
    """Write a category to ``out_dir`` (created; must be empty or absent) from the photos in
    ``photos_dir``; return the readiness report (also written as JSON). A run that fails or is
    interrupted leaves nothing behind (``out_dir`` as it found it), so no later command takes a
    half-written category for a prepared one."""
    cfg = cfg or PrepareConfig()
    photos_dir, out = Path(photos_dir), Path(out_dir)
    check_category_name(out.resolve().name)  # the name `rpe-pad train` will give the category
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: output folder is a file")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output folder exists and is not empty: remove it or choose another --out")
    if cfg.focal is not None and not (math.isfinite(cfg.focal) and cfg.focal > 0):
        raise PrepareError(f"--focal must be a positive number of pixels, got {cfg.focal}")
    existed = out.exists()
    try:
        return _prepare(photos_dir, out, cfg, progress)
    except BaseException:  # a failure, Ctrl-C or a kill signal Python sees: nothing half-written stays
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():  # it was there, empty: empty again
            for child in list(out.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def _prepare(photos_dir: Path, out: Path, cfg: PrepareConfig, progress: bool) -> dict:
    start = time.perf_counter()
    say = _stepper(progress, start)

    say("reading photos")
    photos, skipped = read_photos(photos_dir, cfg.max_size)
    for s in skipped:
        say(f"  set aside {s.name}: {s.reason}")
    report_dir = out / "prepare"
    report_dir.mkdir(parents=True, exist_ok=True)
    focal = cfg.focal * photos[0].scale if cfg.focal is not None else None
    say("object masks")
    masks = {p.name: mk.from_alpha(p.alpha) if p.alpha is not None else mk.object_mask(p.rgb)
             for p in tqdm(photos, desc="masks", disable=not progress)}
    binary = {n: m.binary for n, m in masks.items()}
    try:
        rec = reconstruct(photos, report_dir / "sfm", binary, cfg.camera_model, focal, cfg.threads,
                          step=lambda name: say(f"structure-from-motion: {name}"))
    except NoStart:
        if focal is None:
            raise
        # A focal length far off (--focal 5 for about 550) keeps every pair from starting; the
        # photos' own estimate then says how far off it was (focal_disagrees: not ready).
        say(f"structure-from-motion found no start with --focal {cfg.focal:g}: again, estimating the focal length")
        rec = reconstruct(photos, report_dir / "sfm", binary, cfg.camera_model, None, cfg.threads,
                          step=lambda name: say(f"structure-from-motion: {name}"))
    shutil.rmtree(report_dir / "sfm" / "images", ignore_errors=True)  # copies of the photos; the masks stay
    registered = [p for p in photos if p.name in rec.w2c]
    say(f"{len(registered)} of {len(photos)} photos registered, mean reprojection error "
        f"{np.nanmean(list(rec.reprojection_px.values())):.2f} px")
    for name, reason in rec.unregistered.items():
        say(f"  not registered {name}: {reason}")
    for name in rec.replaced:
        say(f"  placed again {name}: the silhouette refuted structure-from-motion's pose; another pose fits it")

    sim = normalise(np.stack([rec.w2c[p.name] for p in registered]))
    w2c = np.stack([sim.pose(rec.w2c[p.name]) for p in registered])
    centres, _, _ = centres_and_axes(w2c)
    undistort = rec.camera.distortion_px() > UNDISTORT_PX
    lens = Undistortion(np.array([[rec.camera.focal, 0, rec.camera.width / 2], [0, rec.camera.focal,
                                                                                 rec.camera.height / 2], [0, 0, 1]]),
                        rec.camera.distortion, rec.camera.width, rec.camera.height) if undistort else None

    train = out / "train" / "good"
    mask_dir = report_dir / "masks"
    train.mkdir(parents=True)
    mask_dir.mkdir()
    stats: list[rp.PhotoStats] = []
    sheet_cells = []
    frames = []
    # Each photo's encoding, from its bytes (read again, a few MB in all; parsed for headers only)
    compressions = {p.name: compression_of((photos_dir / p.name).read_bytes()) for p in photos}
    for i, photo in enumerate(tqdm(registered, desc="writing", disable=not progress)):
        rgb = photo.rgb if lens is None else lens(photo.rgb)  # the same undistortion as the bundle's queries get
        if lens is None:
            mask = masks[photo.name]
        else:  # the photo's own alpha goes through the lens with it; otherwise the mask is found again
            mask = mk.from_alpha(lens(photo.alpha)) if photo.alpha is not None else mk.object_mask(rgb)
        file = f"{i:03d}"
        Image.fromarray(mk.composite(rgb, mask.alpha)).save(train / f"{file}.png")
        Image.fromarray((mask.alpha * 255 + 0.5).astype(np.uint8)).save(mask_dir / f"{file}.png")
        c2w = cam.opencv_w2c_to_opengl_c2w(torch.from_numpy(w2c[i]))
        frames.append({"file_path": f"train/good/{file}", "transform_matrix": c2w.tolist(), "source": photo.name})
        distance = float(np.linalg.norm(centres[i]))
        encoding = compressions[photo.name]
        stats.append(rp.PhotoStats(
            name=photo.name, file=f"train/good/{file}.png", registered=True, reason=None,
            reprojection_px=rec.reprojection_px[photo.name], silhouette=rec.silhouette.get(photo.name),
            placed_again=photo.name in rec.replaced, sharpness=rp.sharpness(rgb, mask.binary),
            overexposed=rp.overexposed(rgb, mask.binary), mask_area=mask.area, background_spread=mask.border_spread,
            border_object=mask.border_object,
            apparent_size=math.sqrt(mask.binary.sum()) * distance / rec.camera.focal,
            azimuth_deg=math.degrees(math.atan2(centres[i, 1], centres[i, 0])),
            elevation_deg=math.degrees(math.asin(np.clip(centres[i, 2] / distance, -1, 1))),
            jpeg_quality=encoding.quality if encoding is not None and encoding.format == "JPEG" else None,
        ))
        sheet_cells.append((photo.name, rgb, mask.binary, None))
    stats += [rp.PhotoStats(name=n, file=None, registered=False, reason=r) for n, r in rec.unregistered.items()]

    width, height = rec.camera.width, rec.camera.height
    angle_x = 2 * math.atan(width / (2 * rec.camera.focal))
    cameras = sorted({p.camera for p in photos if p.camera})
    exif_focal = next((p.focal_35mm / 36.0 * max(width, height) for p in photos if p.focal_35mm), None)
    transforms = {
        "camera_angle_x": angle_x,
        "frames": frames,
        "camera": {  # models.data.CameraModel: the bundle records it; queries are undistorted and checked with it
            "exif": cameras[0] if len(cameras) == 1 else None, "width": width, "height": height,
            "lens": {"model": rec.camera.model, "radial": list(rec.camera.distortion)} if undistort else None,
            # the PNGs written here carry the photos' compression: lossy queries are judged as the photos were
            "lossy": any(c is not None for c in compressions.values()),
        },
        "prepared_by": "rpe-pad prepare",
    }
    (out / "train" / "transforms.json").write_text(json.dumps(transforms, indent=1) + "\n")

    groups = 1 + len({r for r in rec.unregistered.values() if "separate group" in r})
    flags = rp.warnings_for(stats, [(s.name, s.reason) for s in skipped if s.photo], rec.camera.focal, exif_focal, groups,
                            given_focal=cfg.focal, scale=photos[0].scale)
    flagged = {n for f in flags for n in f.photos}
    elevations = np.array([s.elevation_deg for s in stats if s.registered])
    report = rp.to_json({
        "category": out.name,
        "photos_dir": str(photos_dir),
        "config": asdict(cfg),
        "ready": not any(f.error for f in flags),
        "photos": len(photos) + sum(s.photo for s in skipped),
        "registered": len(registered),
        "mean_reprojection_px": float(np.mean([s.reprojection_px for s in stats if s.registered])),
        "camera": {
            "model": rec.camera.model, "width": width, "height": height, "focal_px": rec.camera.focal,
            "camera_angle_x_deg": math.degrees(angle_x), "distortion": list(rec.camera.distortion),
            "distortion_at_corner_px": rec.camera.distortion_px(), "undistorted": undistort,
            "exif_camera": cameras, "exif_focal_px": exif_focal,
            "photo_scale": photos[0].scale,
        },
        "frame": {"convention": "object at the origin (nearest point to the optical axes), +z up (normal to the cameras' "
                                "right directions, on the side of their mean up), "
                                "median camera distance 4.0", "from_sfm": sim.to_dict()},
        "coverage": {
            "azimuth_gap_deg": rp.azimuth_gap(np.array([s.azimuth_deg for s in stats if s.registered])),
            "elevation_deg": [float(elevations.min()), float(elevations.max())],
            "elevation_gap_deg": list(rp.elevation_gap(elevations)),
            "camera_distance": [float(np.linalg.norm(centres, axis=1).min()),
                                float(np.linalg.norm(centres, axis=1).max())],
        },
        "seconds": {**rec.seconds, "total": time.perf_counter() - start},
        "warnings": flags,
        "photos_detail": stats,
        "skipped": [asdict(s) for s in skipped],
    })
    rp.coverage_figure(centres, stats, f"{out.name}: {len(registered)} views, mean reprojection "
                       f"{report['mean_reprojection_px']:.2f} px", frozenset(flagged)).save(report_dir / "coverage.png")
    unused = [(p.name, p.rgb, masks[p.name].binary, "not registered") for p in photos if p.name in rec.unregistered]
    rp.mask_sheet([(name, rgb, m, note or ("flagged" if name in flagged else None))
                   for name, rgb, m, note in unused + sheet_cells],
                  f"{out.name}: {'READY' if report['ready'] else 'NOT READY'}; object masks by photo name (red: "
                  "background removed; first x: not registered, !: flagged)").save(report_dir / "masks.png")
    (report_dir / "readiness.json").write_text(json.dumps(report, indent=1) + "\n")  # last: the report is whole
    return report


def _stepper(progress: bool, start: float):
    def say(message: str) -> None:
        if progress:
            print(f"prepare [{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)
    return say


def summary(report: dict) -> str:
    """What the CLI prints: the verdict, the figures and every warning."""
    cam_ = report["camera"]
    cov = report["coverage"]
    lines = [
        f"{report['category']}: {'READY' if report['ready'] else 'NOT READY'} "
        f"({report['registered']} of {report['photos']} photos registered, mean reprojection error "
        f"{report['mean_reprojection_px']:.2f} px, {report['seconds']['total']:.0f} s)",
        f"camera: {cam_['model']} {cam_['width']}x{cam_['height']}, focal {cam_['focal_px']:.1f} px "
        f"({cam_['camera_angle_x_deg']:.1f} degrees across), distortion at the corner "
        f"{cam_['distortion_at_corner_px']:.2f} px ({'undistorted' if cam_['undistorted'] else 'kept as is'})",
        f"coverage: elevation {cov['elevation_deg'][0]:.0f} to {cov['elevation_deg'][1]:.0f} degrees (largest gap "
        f"{cov['elevation_gap_deg'][1]:.0f}), largest azimuth gap {cov['azimuth_gap_deg']:.0f} degrees, camera distance "
        f"{cov['camera_distance'][0]:.2f}-{cov['camera_distance'][1]:.2f}",
    ]
    for flag in report["warnings"]:
        names = flag["photos"]
        lines.append(f"{'ERROR' if flag['error'] else 'warning'} {flag['code']}: {flag['message']}"
                     + (f" [{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}]" if names else ""))
    for photo in report["photos_detail"]:
        if not photo["registered"]:
            lines.append(f"not registered {photo['name']}: {photo['reason']}")
    for s in report["skipped"]:
        lines.append(f"set aside {s['name']}: {s['reason']}")
    return "\n".join(lines)
