"""The `calibration` stage of `rpe-pad train`: normal scores -> threshold and floors.

Rule ``false_alarm`` (the ``cpu`` and ``paper`` presets; ``holdout_every = n > 0``): the
splats stage withholds every n-th training view for the first ``fold_in`` share of its
steps and saves the model at that step, the *calibration model* (``training/splats.py``);
the held-out views then join the fit, so the shipped model still sees every view. With
``folds`` > 1 (the presets: n), the other folds' views have calibration models of their own,
the same fit withholding them and stopped at the same step, and every fold is scored against
its own model: each training view is then a held-out view once. Those held-out photographs
are views their calibration model never saw, as a customer's queries are: each is scored against its renders at ``jitters`` poses jittered by ``jitter_px``
(the residual pose error the pose stages leave), each render then warped onto its photograph
by the refinement's last step (``models.refine.ecc_align``, as ``Refine`` does for every
query), for the scorer's normal statistics and the scores alike: a random jitter is not
what the pipeline leaves, a photometrically aligned reference is (docs/RESULTS.md, issue 22,
session 12). The calibration model is less converged than the shipped one, so
these scores are first multiplied by ``heldout_scale``: the median, over the views both
models fitted, of the shipped model's score over the calibration model's, each at the view's
own pose (``convergence_ratio``; Lego 0.91, synthetic seed 1 0.94: docs/RESULTS.md), measured on
the shipped fit's own fold and applied to every fold (each fold's model stops at the same step). The
threshold is the ``1 - false_alarm_rate`` quantile of the scaled scores: on views like them,
that share of good parts is rejected. Resampling the held-out views gives the threshold's 90 %
range and the false-alarm rate's (``models.calibration.threshold_spread``), stored with it: a
dozen views pin a 2 % quantile down loosely, and the range says how loosely. (The model fitted
to the photographs it is then compared with renders them better than any new view, so a threshold from those scores sits too low for new views'
render error and too high for what defects add; docs/SCORING.md has the figures.)

Rule ``quantile`` (the quick one: the ``demo`` preset, ``holdout_every = 0``), from the
category's training views and the fitted model itself:

- ``in_sample``: each training view against its render at its own pose (the model's
  render error on views it was fitted to: optimistic);
- ``jittered``: each training view against a render at its pose rotated by a small random
  camera rotation whose image displacement has an rms of ``jitter_px`` pixels (per-axis
  std ``jitter_px / (sqrt(2) fx)`` radians), so the threshold also covers the residual
  pose error the pose stages leave (about a pixel: docs/SCORING.md). The threshold rule
  of ``models/calibration.py`` runs on these scores.

With a labelled validation category (``validation``: its test split, true poses), the
threshold is the F1-optimal one on that set instead (rule ``f1``); the normal statistics
are kept either way. Output: ``calibration/calibration.json`` (a ``Calibration``),
``reports/calibration.json`` and ``reports/calibration_hist.png``; with held-out views, also the
views that set the threshold (``highest_heldout_views``: the ``HIGHEST_VIEWS`` held-out views whose
jittered copies score highest, each with the fold whose model lacked it) in the report, and on a
sheet, ``reports/calibration_views.png``: each photograph with its highest copy's map and, at the
map's peak, the residue of the model that lacked it and of the shipped model (``peak_residues``). A
few views can hold the threshold up (on Lego, three views with a light track link or studs that the
200 px model draws smooth, the shipped model too on two of them: docs/RESULTS.md, sessions 37-38); the
sheet shows where, and whether more photographs there or a finer fit is the remedy.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm

from models.calibration import (
    SPREAD_MIN_VIEWS,
    Calibration,
    ScoreStats,
    exceeds,
    f1_threshold,
    pixel_quantiles,
    quantile_threshold,
    threshold_spread,
)
from models.camera import perturb_pose
from models.bundle import FILES, REPORTS, WORK_FILES
from models.data import GOOD, Category
from models.hashing import sha256_file
from models.images import decode_rgb, load_rgb, resize_rgb, to_uint8
from models.inspector import align_references, compare_at_poses
from models.refine import RefineConfig
from models.scoring import (
    COLOURS,
    DEFAULT_TOLERANCE,
    SCORE_SIZE,
    AnomalyScorer,
    blur_maps,
    colour_terms,
    either_maps,
    fit_map_scale,
    fit_normal_stats,
)
from models.splat.scene import GaussianScene
from models.viz import Cell, anomaly_overlay, contact_sheet, figure, peak_ring
from training.evaluate import render_references
from training.splats import SplatConfig, calibration_key, config_record, default_device, fold_offsets, fold_paths, holdout_indices


# The calibration's method; a change that moves thresholds bumps it, so that no work folder's
# earlier calibration is reused. 2: held-out scores scaled by the convergence ratio; 3: the
# jittered renders aligned onto their photographs by the refinement's 2D step before scoring;
# 4: ``either`` with its area maps, ``area3`` and ``area5`` (models.scoring, session 20);
# 5: and with its ``fine`` map (session 21); 6 was the polish before ECC, measured and not adopted
# (session 24); 7: the threshold's and the false-alarm rate's ranges over resampled held-out views
# (``models.calibration.threshold_spread``; the thresholds themselves as under 5); 8 and 9 were
# measured and not adopted (sessions 26, 27); 10: the returned map blurred with a sigma of its own,
# with its levels and ``map_scale`` (``map_sigma``, session 31; the thresholds as under 7);
# 11: and the JPEG qualities the bundle takes (``jpeg_tolerance``, session 33; thresholds as under 7);
# 12: the held-out views of every fold, each against its own calibration model, for the threshold, the
# statistics and the JPEG ladder alike (``folds``, session 36).
METHOD = 12
# JPEG settings (quality, chroma) tried on the held-out photos, finest first (in that order on seed 1's
# views: docs/RESULTS.md, session 33); 4:2:0 is the encoders' default.
JPEG_LADDER = ((100, "4:4:4"), (95, "4:4:4"), (90, "4:4:4"), (95, "4:2:0"), (90, "4:2:0"), (85, "4:2:0"), (75, "4:2:0"))
_SUBSAMPLING = {"4:4:4": 0, "4:2:0": 2}


# The combinations the stage fits (models.scoring.COMBINATIONS): the peers' sum (the demo preset) and
# ``either`` (the cpu and paper presets since session 18). ``silhouette`` and ``structure``, the presets'
# earlier combinations, were retired from calibration in session 44; bundles calibrated with them still
# load and score as calibrated.
CALIBRATED = ("peers", "either")
HIGHEST_VIEWS = 4  # held-out views the calibration report and its sheet name, highest first
RESIDUE_SIGMA = 2.0  # px at the bundle's size: |photograph - render| blurred so before it is read at a view's peak
MAX_MAP_SIGMA = SCORE_SIZE / 8  # the blur's 4 sigma each side stays within the map (models.scoring.check_config)


@dataclass(frozen=True)
class CalibConfig:
    holdout_every: int = 0  # > 0: rule false_alarm, every n-th training view held out of a calibration model
    folds: int = 1  # rule false_alarm: calibration models, one per fold of every n-th view (n: every view held out once)
    combination: str = "peers"  # how the scorer combines its terms (CALIBRATED); either only with held-out views
    colour: str = "rgb"  # the scorer's colour term (models.scoring.COLOURS); lab only with a fitted combination
    map_sigma: float | None = None  # either: the returned map's blur, apart from the score's (models.scoring)
    false_alarm_rate: float = 0.02  # rule false_alarm: the share of good parts the threshold may reject
    jitters: int = 4  # rule false_alarm: jittered poses per held-out view
    quantile: float = 0.99  # rule quantile: Q_quantile(in-sample jittered scores) x (1 + margin)
    margin: float = 0.10
    jitter_px: float = 1.0  # rms image displacement of the pose jitter, pixels at the model's size
    max_views: int = 0  # rule quantile: 0 = every training view
    tolerance: int = DEFAULT_TOLERANCE
    batch: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.holdout_every < 0 or self.holdout_every == 1 or self.jitters < 1:
            raise ValueError(f"need holdout_every 0 or >= 2 and jitters >= 1, got {self}")
        if not 1 <= self.folds <= max(self.holdout_every, 1):
            raise ValueError(f"folds must lie in [1, holdout_every] (one calibration model per fold of every "
                             f"{self.holdout_every}-th view; 1 without held-out views), got {self.folds}")
        if self.combination not in CALIBRATED or (self.combination != "peers" and not self.holdout_every):
            raise ValueError(f"combination must be one of {list(CALIBRATED)}, and other than peers only with "
                             f"held-out views to fit it on, got {self.combination!r}")
        if self.colour not in COLOURS or (self.colour != "rgb" and self.combination == "peers"):
            raise ValueError(f"colour must be one of {list(COLOURS)}, and other than rgb only with a combination that "
                             f"scales each term by its normal statistics, got {self.colour!r} with {self.combination!r}")
        if self.map_sigma is not None and not (self.combination == "either" and 0 < self.map_sigma <= MAX_MAP_SIGMA):
            raise ValueError(f"map_sigma must lie in (0, {MAX_MAP_SIGMA:g}] (the scorer's 224 px over 8), and be set only "
                             f"with the 'either' combination, got {self.map_sigma!r} with {self.combination!r}")
        if not 0 < self.false_alarm_rate < 0.5:
            raise ValueError(f"false_alarm_rate must lie in (0, 0.5), got {self.false_alarm_rate}")


def _score(scorer: AnomalyScorer, scene: GaussianScene, images: torch.Tensor, poses: torch.Tensor, Ks: torch.Tensor,
           batch: int, bar: tqdm, align: RefineConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores [V] and maps subsampled to 64 x 64 [V, 64, 64] of ``images`` vs renders at
    ``poses``: the inspection pipeline's render and score stages at known poses
    (``models.inspector.compare_at_poses``)."""
    scores, maps = [], []
    for i in range(0, len(images), batch):
        m, s = compare_at_poses(scene, scorer, images[i : i + batch], poses[i : i + batch], Ks[i : i + batch], align)
        scores.append(s.numpy())
        maps.append(torch.nn.functional.interpolate(m[:, None], size=(64, 64), mode="area")[:, 0].numpy())
        bar.update(len(m))
    return np.concatenate(scores), np.concatenate(maps)


def pixel_floor(quantiles: dict[str, float], score_floor: float) -> float:
    """The anomaly map's floor: the median normal pixel, kept at most half the score's floor
    (so a map's normalisation never starts above the score's)."""
    return min(quantiles["q0.5"], score_floor * 0.5)


def split_holdout(category: Category, every: int) -> tuple[Category, list]:
    """``category`` less every ``every``-th training view (``training.splats.holdout_indices``),
    and the held-out views."""
    try:
        held = set(holdout_indices(len(category.train), every))
    except ValueError as exc:
        raise ValueError(f"{category.root}: {exc}") from None
    keep = [v for i, v in enumerate(category.train) if i not in held]
    return replace(category, train=keep, test=[]), [v for i, v in enumerate(category.train) if i in held]


def calibration_model(category: Category, splats: SplatConfig, cfg: CalibConfig, work: Path,
                      device: torch.device | None = None, offset: int | None = None) -> tuple[GaussianScene, list, dict]:
    """The calibration model the splats stage left for the fold from ``offset`` (default: the
    shipped fit's own, its snapshot before the held-out views were folded in), on ``device``
    (default: CUDA when present), and the views held out of it; ``ValueError`` with the remedy
    when it is missing or was fitted with other settings or views."""
    offset = cfg.holdout_every // 2 if offset is None else offset
    held_idx = set(holdout_indices(len(category.train), cfg.holdout_every, offset))
    held = [v for i, v in enumerate(category.train) if i in held_idx]
    path, key_path = fold_paths(work, cfg.holdout_every, offset)
    try:
        key = json.loads(key_path.read_text())
    except (OSError, ValueError):
        key = None
    if key != calibration_key(category, splats, cfg.holdout_every, offset):
        raise ValueError(f"{work}: no calibration model for these settings (holding out one view in "
                         f"{cfg.holdout_every}, from view {offset}): rerun the splats stage with this calibration "
                         "(rpe-pad train --stages splats,calibration)")
    scene = GaussianScene.load(path, device=device or default_device())
    return scene, held, {"offset": offset, "fold_in_step": key["fold_in_step"], "num_gaussians": scene.num_gaussians}


def calibration_models(category: Category, splats: SplatConfig, cfg: CalibConfig, work: Path,
                       device: torch.device | None = None) -> tuple[list[tuple[GaussianScene, list]], list[dict]]:
    """Every fold's calibration model and held-out views (``training.splats.fold_offsets``), the
    shipped fit's own first, and what each was fitted with."""
    models, fits = [], []
    for offset in fold_offsets(cfg.holdout_every, cfg.folds):
        scene, held, fit = calibration_model(category, splats, cfg, work, device, offset)
        models.append((scene, held)), fits.append(fit)
    return models, fits


@dataclass
class HeldOut:
    """The held-out views' evidence: scores at their own poses ``[V]``, at jittered poses
    ``[V * jitters]`` and the latter's maps at 64 x 64, under the scorer fitted on them;
    ``scale``: what stands the calibration model's scores for the shipped model's
    (``convergence_ratio``)."""

    own: np.ndarray
    jittered: np.ndarray
    maps: np.ndarray
    scorer: AnomalyScorer
    scale: float = 1.0


def convergence_ratio(shipped: GaussianScene, model: GaussianScene, seen: list, scorer: AnomalyScorer, batch: int,
                      progress: bool = True) -> float:
    """The median over ``seen`` (views both models fitted) of the shipped model's score over
    the calibration model's, each view at its own pose."""
    images = torch.stack([v.image for v in seen])
    poses = torch.stack([v.w2c for v in seen])
    Ks = torch.stack([v.K for v in seen])
    bar = tqdm(total=2 * len(seen), desc="calibration (convergence)", unit="view", disable=not progress)
    final, _ = _score(scorer, shipped, images, poses, Ks, batch, bar)
    early, _ = _score(scorer, model, images, poses, Ks, batch, bar)
    bar.close()
    return float(np.median(final / np.maximum(early, 1e-12)))


def _jittered(held: list, cfg: CalibConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The held-out views' poses, intrinsics and their ``cfg.jitters`` jittered poses each (seeded)."""
    poses = torch.stack([v.w2c for v in held])
    Ks = torch.stack([v.K for v in held])
    sigma = cfg.jitter_px / (math.sqrt(2) * float(Ks[0, 0, 0]))
    gen = torch.Generator().manual_seed(cfg.seed)
    return poses, Ks, perturb_pose(poses.repeat_interleave(cfg.jitters, dim=0), sigma, 0.0, gen)


def _fold_spans(models: list[tuple[GaussianScene, list]], jitters: int) -> list[tuple[GaussianScene, slice, slice]]:
    """Each fold's model with the slices of its views in the folds' concatenated views, and of
    their jitters in the concatenated jittered poses (``_jittered`` of all views: a view's jitters together)."""
    bounds = np.cumsum([0] + [len(held) for _, held in models])
    return [(scene, slice(int(a), int(b)), slice(int(a) * jitters, int(b) * jitters))
            for (scene, _), a, b in zip(models, bounds[:-1], bounds[1:])]


def heldout_scores(scene: GaussianScene, held: list, cfg: CalibConfig, progress: bool = True) -> HeldOut:
    """``heldout_scores_folds`` with one fold: ``held`` against ``scene``."""
    return heldout_scores_folds([(scene, held)], cfg, progress)


def heldout_scores_folds(models: list[tuple[GaussianScene, list]], cfg: CalibConfig, progress: bool = True) -> HeldOut:
    """Score each fold's held-out views against its calibration model (``models``: pairs of a
    model and the views held out of it); with a combination other than the peers' sum, its normal
    statistics are fitted first on every fold's jittered views together (``models.scoring``). The
    scores follow the folds' order, each view's jitters together."""
    held_all = [v for _, held in models for v in held]
    device = models[0][0].means.device  # the scorer runs where the models render (its statistics are fitted on the CPU)
    scorer = AnomalyScorer(tolerance=cfg.tolerance, background=models[0][0].background, colour=cfg.colour).to(device)
    images = torch.stack([v.image for v in held_all])
    poses, Ks, jittered_poses = _jittered(held_all, cfg)
    rep_images, rep_Ks = images.repeat_interleave(cfg.jitters, dim=0), Ks.repeat_interleave(cfg.jitters, dim=0)
    folds = _fold_spans(models, cfg.jitters)
    fitting = cfg.combination != "peers"
    align = RefineConfig()  # the refinement's last step: each render warped onto its photograph
    bar = tqdm(total=len(held_all) * (1 + cfg.jitters * (2 if fitting else 1)), desc="calibration (held-out views)",
               unit="view", disable=not progress)
    if fitting:
        terms, silhouettes, edges = [], [], []
        for scene, _, jit in folds:
            for i in range(jit.start, jit.stop, cfg.batch):
                sl = slice(i, min(i + cfg.batch, jit.stop))
                refs = render_references(scene, jittered_poses[sl], rep_Ks[sl], images.shape[2], images.shape[1])
                refs = align_references(rep_images[sl], refs, align)
                t, sil = scorer.inputs(rep_images[sl].to(device), refs.to(device))
                terms.append(t.cpu()), silhouettes.append(sil.cpu())
                edges.append(scorer.edges(refs.to(device)).cpu())
                bar.update(len(refs))
        terms, silhouettes, edges = torch.cat(terms), torch.cat(silhouettes), torch.cat(edges)
        stats = fit_normal_stats(terms, silhouettes, edges, sigma=scorer.sigma, colours=colour_terms(scorer.colour),
                                 map_sigma=cfg.map_sigma)
        if cfg.map_sigma is not None:  # the sharp map's threshold onto the score's, on the same renders
            peaks = [[m.flatten(1).amax(1) for m in either_maps(terms[i:i + cfg.batch], stats, silhouettes[i:i + cfg.batch],
                                                                  edges[i:i + cfg.batch], scorer.sigma, cfg.map_sigma)]
                     for i in range(0, len(terms), cfg.batch)]  # a batch at a time: the maps of every view at once are large
            stats.map_scale = fit_map_scale(torch.cat([p[0] for p in peaks]), torch.cat([p[1] for p in peaks]),
                                            cfg.false_alarm_rate)
        del terms, silhouettes, edges
        scorer = scorer.with_stats(stats, cfg.combination, cfg.map_sigma)
    own, jittered, maps = [], [], []
    for scene, view, jit in folds:
        own.append(_score(scorer, scene, images[view], poses[view], Ks[view], cfg.batch, bar)[0])
        s, m = _score(scorer, scene, rep_images[jit], jittered_poses[jit], rep_Ks[jit], cfg.batch, bar, align)
        jittered.append(s), maps.append(m)
    bar.close()
    return HeldOut(np.concatenate(own), np.concatenate(jittered), np.concatenate(maps), scorer)


def highest_heldout_views(models: list[tuple[GaussianScene, list]], offsets: list[int], heldout: HeldOut,
                          threshold: float, n: int = HIGHEST_VIEWS) -> list[dict]:
    """The ``n`` held-out views whose highest jittered copy scores highest (scaled as the
    threshold reads them, ``heldout.scale``), highest first: each view's name, the offset of the
    fold whose calibration model lacked it (``offsets``, in the order of ``models``), that copy's
    score and index in ``heldout.jittered``, and how many of its copies are over ``threshold``."""
    names = [(v.name, offset) for (_, held), offset in zip(models, offsets) for v in held]
    copies = (heldout.jittered * heldout.scale).reshape(len(names), -1)
    order = np.argsort(-copies.max(1), kind="stable")[:n]
    return [{"view": names[i][0], "fold_offset": names[i][1], "score": round(float(copies[i].max()), 4),
             "copy": int(i * copies.shape[1] + copies[i].argmax()),
             "copies_over_threshold": int(exceeds(copies[i], threshold).sum()), "copies": int(copies.shape[1])}
            for i in order]


def peak_residues(models: list[tuple[GaussianScene, list]], shipped: GaussianScene, heldout: HeldOut,
                  views: list[dict]) -> tuple[list[dict], list[torch.Tensor]]:
    """Why each of ``highest_heldout_views``' views scores high: where its highest copy's map
    peaks (``peak_px``, pixels of the photograph) and the render residue there, |photograph -
    render| (the mean over RGB, blurred with ``RESIDUE_SIGMA``) at the view's own pose, of the
    calibration model that lacked the view and of the shipped model, fitted on it, with the
    shipped model's share. A share near 1: the model cannot draw that part even from this
    photograph (a finer fit is the remedy; on Lego, light track links and studs at 200 px); well
    under 1: it is drawn right once the photograph is in the fit (more photographs from around
    this view are the remedy). Also returns each view's two renders ``[2, H, W, 3]``."""
    held = {v.name: (scene, v) for scene, vs in models for v in vs}
    rows, renders = [], []
    for row in views:
        scene, view = held[row["view"]]
        h, w = view.image.shape[:2]
        m = heldout.maps[row["copy"]]
        py, px = np.unravel_index(int(np.argmax(m)), m.shape)
        y, x = min(int((py + 0.5) * h / m.shape[0]), h - 1), min(int((px + 0.5) * w / m.shape[1]), w - 1)
        both = torch.cat([render_references(model, view.w2c[None], view.K[None], w, h) for model in (scene, shipped)])
        lacked, fitted = blur_maps((both - view.image[None].float()).abs().mean(-1), RESIDUE_SIGMA)[:, y, x].tolist()
        rows.append({**row, "peak_px": [y, x], "residue": {
            "calibration_model": round(lacked, 4), "shipped_model": round(fitted, 4),
            "shipped_share": round(fitted / lacked, 3) if lacked > 0 else None}})
        renders.append(both)
    return rows, renders


def views_sheet(models: list[tuple[GaussianScene, list]], heldout: HeldOut, calib: Calibration, views: list[dict],
                title: str, renders: list[torch.Tensor] | None = None):
    """``highest_heldout_views`` on a contact sheet: each photograph, and its highest copy's map
    (the 64 x 64 calibration map, scaled as the threshold reads it) over it; with ``renders``
    (``peak_residues``), also the model that lacked the view and the shipped model there, each
    with its residue at the peak, which a ring marks on the photograph and the renders."""
    photos = {v.name: v.image for _, held in models for v in held}
    rows = []
    for i, row in enumerate(views):
        photo = photos[row["view"]]
        amap = torch.from_numpy(heldout.maps[row["copy"]] * heldout.scale)[None, None].float()
        amap = torch.nn.functional.interpolate(amap, size=tuple(photo.shape[:2]), mode="bilinear", align_corners=False)[0, 0]
        over = f"{row['copies_over_threshold']}/{row['copies']} copies over"
        shown = photo.numpy() if "peak_px" not in row else peak_ring(photo.numpy(), row["peak_px"])
        cells = [Cell(shown, "held-out photograph"),
                 Cell(anomaly_overlay(photo.numpy(), calib.normalise_map(amap.numpy())),
                      f"{figure(row['score'])} / {figure(calib.threshold)}: {over}")]
        if renders is not None and "residue" in row:  # peak_residues gives both the residue and its peak_px
            r = row["residue"]
            share = "" if r["shipped_share"] is None else f" ({100 * r['shipped_share']:.0f} %)"
            lacked, shipped = (peak_ring(render.numpy(), row["peak_px"]) for render in renders[i])
            cells += [Cell(lacked, f"model that lacked it: {r['calibration_model']:.2f}"),
                      Cell(shipped, f"shipped model: {r['shipped_model']:.2f}{share}")]
        rows.append((f"{row['view'].split('/')[-1]} (fold {row['fold_offset']})", cells))
    return contact_sheet(rows, cell=200, title=f"{title}: the held-out views that score highest")


def jpeg_tolerance(models: list[tuple[GaussianScene, list]], cfg: CalibConfig, heldout: HeldOut, threshold: float,
                   progress: bool = True) -> tuple[list[tuple[int, str]], int, dict[str, float]]:
    """Which JPEG settings a bundle trained on lossless photos can judge, measured on its own
    held-out photos (every fold's, each against its calibration model: ``models`` as for
    ``heldout_scores_folds``, so the uncompressed photos reject the stated rate): each is
    compressed at its own size at each step of ``JPEG_LADDER``, decoded and resized as a query
    is, and scored as the calibration scores it (jittered, aligned, times the convergence ratio).
    Returns the steps, from the finest, that each reject at most twice the false-alarm rate the
    threshold was set for (the ladder stops at the first that does not), the photos' width (a
    query at least as wide is compressed no more coarsely at the scorer's scale) and each step's
    false-alarm rate."""
    held_all = [v for _, held in models for v in held]
    _, Ks, jittered_poses = _jittered(held_all, cfg)
    rep_Ks = Ks.repeat_interleave(cfg.jitters, dim=0)
    background = models[0][0].background
    photos = [to_uint8(load_rgb(v.path, background)) for v in held_all]
    height, width = held_all[0].image.shape[:2]
    folds = _fold_spans(models, cfg.jitters)
    bar = tqdm(total=len(held_all) * cfg.jitters * len(JPEG_LADDER), desc="calibration (JPEG ladder)", unit="view",
               disable=not progress)
    rates, taken = {}, []
    for quality, chroma in JPEG_LADDER:
        images = []
        for photo in photos:
            buf = io.BytesIO()
            Image.fromarray(photo).save(buf, format="JPEG", quality=quality, subsampling=_SUBSAMPLING[chroma])
            images.append(torch.from_numpy(resize_rgb(decode_rgb(buf.getvalue(), background), width, height)))
        images = torch.stack(images).repeat_interleave(cfg.jitters, dim=0)
        scores = np.concatenate([_score(heldout.scorer, scene, images[jit], jittered_poses[jit], rep_Ks[jit], cfg.batch,
                                        bar, RefineConfig())[0] for scene, _, jit in folds])
        rates[f"q{quality} {chroma}"] = float(np.mean(exceeds(scores * heldout.scale, threshold)))
        if rates[f"q{quality} {chroma}"] > 2 * cfg.false_alarm_rate:
            break
        taken.append((quality, chroma))
    bar.close()
    return taken, photos[0].shape[1], rates


def check_validation(validation: Category) -> None:
    """A labelled validation set's problems (``ValueError``), checked before any stage runs: its
    F1-optimal threshold needs test views, each with its true pose, good and defective ones."""
    queries = validation.test
    if not queries:
        raise ValueError(f"{validation.root}: a validation set needs labelled test views (test/good, test/<defect>); "
                         "it has none")
    if any(q.w2c is None for q in queries):
        raise ValueError(f"{validation.root}: a validation set needs true poses for every test view "
                         "(test/transforms.json)")
    kinds = {q.label == GOOD for q in queries}
    if len(kinds) < 2:
        raise ValueError(f"{validation.root}: a validation set needs good and defective test views (its threshold "
                         f"is the one that best separates them); it has {'good' if True in kinds else 'defective'} "
                         "ones only")


def calibrate(category: Category, scene: GaussianScene, cfg: CalibConfig, validation: Category | None = None,
              progress: bool = True, heldout: HeldOut | None = None) -> tuple[Calibration, dict]:
    """The category's Calibration and the raw score lists behind it; ``heldout``: the
    held-out views' scores and fitted scorer (``heldout_scores``) for rule ``false_alarm``."""
    views = category.train
    if cfg.max_views and len(views) > cfg.max_views:
        views = views[:: math.ceil(len(views) / cfg.max_views)]
    images = torch.stack([v.image for v in views])
    poses = torch.stack([v.w2c for v in views])
    Ks = torch.stack([v.K for v in views])
    focal = float(Ks[0, 0, 0])
    gen = torch.Generator().manual_seed(cfg.seed)
    jittered = perturb_pose(poses, cfg.jitter_px / (math.sqrt(2) * focal), 0.0, gen)
    scorer = heldout.scorer if heldout is not None else AnomalyScorer(tolerance=cfg.tolerance)
    n_val = len(validation.test) if validation is not None else 0
    bar = tqdm(total=2 * len(views) + n_val, desc="calibration", unit="view", disable=not progress)
    in_sample, _ = _score(scorer, scene, images, poses, Ks, cfg.batch, bar)
    normal, normal_maps = _score(scorer, scene, images, jittered, Ks, cfg.batch, bar)
    raw = {"in_sample": in_sample.tolist(), "jittered": normal.tolist()}
    sources = {"in_sample": len(views), "jittered": len(views)}
    rule, threshold = "quantile", quantile_threshold(normal, cfg.quantile, cfg.margin)
    spread = None
    if heldout is not None:
        own, held_scores, held_maps = heldout.own, heldout.jittered * heldout.scale, heldout.maps * heldout.scale
        raw.update(heldout_own=own.tolist(), heldout=heldout.jittered.tolist(), heldout_scale=heldout.scale,
                   quantile_rule_threshold=threshold)  # what the quick rule would have said, for comparison
        sources.update(heldout_views=len(own), heldout=len(held_scores))
        rule, threshold = "false_alarm", float(np.quantile(held_scores, 1.0 - cfg.false_alarm_rate))
        if len(own) >= SPREAD_MIN_VIEWS:  # too few views give no range rather than a false one
            spread = threshold_spread(held_scores.reshape(len(own), -1), cfg.false_alarm_rate, seed=cfg.seed)
        normal, normal_maps = held_scores, held_maps
    if validation is not None:
        check_validation(validation)
        queries = validation.test
        val_scores, _ = _score(scorer, scene, torch.stack([q.image for q in queries]), torch.stack([q.w2c for q in queries]),
                               torch.stack([q.K for q in queries]), cfg.batch, bar)
        labels = np.array([q.label != GOOD for q in queries])
        rule, threshold = "f1", f1_threshold(labels, val_scores)
        raw["validation"] = val_scores.tolist()
        raw["validation_labels"] = labels.tolist()
        sources["validation"] = len(queries)
    bar.close()
    # The floor of the normalised score: the lowest normal score, kept below the threshold
    # (a validation set may put the F1-optimal cut under some training views' scores).
    floor = float(min(normal.min(), in_sample.min()))
    floor = floor if floor < threshold else threshold / 2
    quantiles = pixel_quantiles(normal_maps)
    calib = Calibration(rule=rule, threshold=threshold, quantile=cfg.quantile, margin=cfg.margin, score_floor=floor,
                        false_alarm_rate=cfg.false_alarm_rate if rule == "false_alarm" else None,
                        heldout_scale=heldout.scale if rule == "false_alarm" else None,
                        threshold_range=spread[0] if spread and rule == "false_alarm" else None,
                        false_alarm_range=spread[1] if spread and rule == "false_alarm" else None,
                        pixel_floor=pixel_floor(quantiles, floor), normal_scores=ScoreStats.of(normal),
                        normal_pixel_quantiles=quantiles, scorer=scorer.config(), sources=sources)
    return calib, raw


def histogram(calib: Calibration, raw: dict, title: str) -> Figure:
    """Normal (and validation) image scores with the threshold; no pyplot state involved. With
    held-out views (rule ``false_alarm``) those set the threshold: they are drawn filled and
    the axis spans them; the in-sample and jittered scores are grey outlines, and any beyond
    the axis are counted in the legend."""
    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")  # room for the legend under the plot
    ax = fig.add_subplot()
    scale = raw.get("heldout_scale", 1.0)
    heldout = np.asarray(raw["heldout"], dtype=float) * scale if "heldout" in raw else None
    everything = np.concatenate([np.asarray(v, dtype=float).ravel() for k, v in raw.items()
                                 if k not in ("validation_labels", "quantile_rule_threshold", "heldout_scale")])
    if heldout is not None:
        top = max(heldout.max(), calib.threshold, *(calib.threshold_range or ())) * 1.3
    else:
        top = max(everything.max(), calib.threshold) * 1.05
    bins = np.linspace(0, top, 40)
    unused = " (not what sets the threshold)" if heldout is not None else ""
    style = dict(histtype="step", lw=1.2) if heldout is not None else dict(alpha=0.5)
    for key, label, colour in (("in_sample", "normal, own pose", "0.55"), ("jittered", "normal, jittered pose", "0.3")):
        values = np.asarray(raw[key], dtype=float)
        beyond = int((values > top).sum())
        ax.hist(np.minimum(values, top), bins=bins, label=label + unused + (f"; {beyond} beyond the axis" if beyond else ""),
                **(dict(style, color=colour) if heldout is not None else style))
    if heldout is not None:
        ax.hist(heldout, bins=bins, alpha=0.7, color="tab:green",
                label=f"held-out views (unseen by their model), jittered; x {scale:.2f}, the held-out model's "
                      "convergence scale")
    if "validation" in raw:
        v, y = np.asarray(raw["validation"]), np.asarray(raw["validation_labels"], dtype=bool)
        ax.hist(np.minimum(v[~y], top), bins=bins, histtype="step", lw=2, label="validation good")
        ax.hist(np.minimum(v[y], top), bins=bins, histtype="step", lw=2, label="validation defective")
    rate = f", {calib.false_alarm_rate:.0%} false alarms" if calib.false_alarm_rate else ""
    ax.axvline(calib.threshold, color="k", ls="--", label=f"threshold {calib.threshold:.2f} ({calib.rule}{rate})")
    if calib.threshold_range is not None:
        lo, hi = calib.threshold_range
        ax.axvspan(lo, hi, color="k", alpha=0.12, label=f"its 90 % range, held-out views resampled ({lo:.2f}-{hi:.2f})")
    ax.set_xlim(0, top)
    ax.set_xlabel("image score (max of the anomaly map)")
    ax.set_ylabel("renders (views x jittered poses)" if heldout is not None else "views")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False)
    return fig


def run_calibration_stage(category: Category, cfg: CalibConfig, out_dir: Path, validation: Category | None = None,
                          progress: bool = True, splats: SplatConfig | None = None,
                          device: torch.device | None = None) -> dict:
    """Calibrate against the work folder's Gaussian model; skipped when a calibration for
    the same config, scenes and validation set exists. Rule ``false_alarm`` reads the
    calibration model the splats stage left with ``splats`` (its settings). The models render
    on ``device`` (default: CUDA when present, as the splats stage fits)."""
    start = time.perf_counter()
    device = device or default_device()
    scene_path = out_dir / FILES["scene"]
    if not scene_path.is_file():
        raise FileNotFoundError(f"{scene_path} is missing: run the splats stage first")
    calib_path, report_path = out_dir / FILES["calibration"], out_dir / REPORTS["calibration"]
    if cfg.holdout_every and splats is None:
        raise ValueError("a held-out calibration (holdout_every > 0) needs the splats stage's settings (its model's key)")
    key = {"method": METHOD, "config": asdict(cfg), "scene_sha256": sha256_file(scene_path),
           "calibration_scene_sha256": (sha256_file(out_dir / WORK_FILES["calibration_scene"])
                                        if cfg.holdout_every and (out_dir / WORK_FILES["calibration_scene"]).is_file() else None),
           "validation": str(validation.root) if validation is not None else None,
           "splats": config_record(splats) if cfg.holdout_every else None,
           "fold_scenes_sha256": [sha256_file(path) if path.is_file() else None for path in
                                  (fold_paths(out_dir, cfg.holdout_every, o)[0]
                                   for o in fold_offsets(cfg.holdout_every, cfg.folds)[1:])]}
    try:
        previous = json.loads(report_path.read_text())
        Calibration.model_validate_json(calib_path.read_text())
        if previous.get("key") == key:
            return {**previous, "skipped": True}
    except (OSError, ValueError):
        pass
    heldout, fits = None, None
    shipped = GaussianScene.load(scene_path, device=device)
    if cfg.holdout_every:
        models, fits = calibration_models(category, splats, cfg, out_dir, device)
        heldout = heldout_scores_folds(models, cfg, progress)
        model, seen = models[0][0], split_holdout(category, cfg.holdout_every)[0].train
        # One ratio for every fold: each fold's model is its fit at the same step (training.splats.fit_folds).
        heldout.scale = convergence_ratio(shipped, model, seen, heldout.scorer, cfg.batch, progress)
    calib, raw = calibrate(category, shipped, cfg, validation, progress, heldout)
    jpeg = None
    if heldout is not None and calib.rule == "false_alarm" and not category.lossy_photos:
        jpeg = jpeg_tolerance(models, cfg, heldout, calib.threshold, progress)
        calib = calib.model_copy(update={"jpeg_taken": jpeg[0], "jpeg_photo_width": jpeg[1]})
    calib_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    calib_path.write_text(calib.model_dump_json(indent=2) + "\n")
    fig = histogram(calib, raw, f"{category.name}: normal image scores")
    fig.savefig(out_dir / REPORTS["calibration_hist"])
    highest = None
    if heldout is not None and calib.rule == "false_alarm":
        highest = highest_heldout_views(models, [fit["offset"] for fit in fits], heldout, calib.threshold)
        highest, renders = peak_residues(models, shipped, heldout, highest)
        views_sheet(models, heldout, calib, highest, category.name, renders).save(out_dir / REPORTS["calibration_views"])
    else:  # no held-out views: no sheet, and none left from an earlier calibration to be copied into the bundle
        (out_dir / REPORTS["calibration_views"]).unlink(missing_ok=True)
    report = {"category": category.name, "rule": calib.rule, "threshold": round(calib.threshold, 4),
              "normal_scores": calib.normal_scores.model_dump(), "in_sample_max": round(max(raw["in_sample"]), 4),
              "seconds": round(time.perf_counter() - start, 1), "device": str(device), "key": key, "scores": raw}
    if heldout is not None:
        report.update(heldout_views=calib.sources["heldout_views"], false_alarm_rate=cfg.false_alarm_rate,
                      threshold_range=calib.threshold_range and [round(v, 4) for v in calib.threshold_range],
                      false_alarm_range=calib.false_alarm_range and [round(v, 4) for v in calib.false_alarm_range],
                      heldout_scale=round(heldout.scale, 4),
                      jpeg_taken=jpeg and jpeg[0], jpeg_photo_width=jpeg and jpeg[1],
                      jpeg_false_alarm_rates=jpeg and {k: round(r, 4) for k, r in jpeg[2].items()},
                      quantile_rule_threshold=round(raw["quantile_rule_threshold"], 4),
                      calibration_model=fits[0], calibration_folds=fits, highest_heldout_views=highest)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
