"""Anomaly maps: zero for identical images, peaked on a defect, tolerant mode vs shifts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.data import load_category
from models.features import FeatureExtractor
from models.scoring import (
    EITHER_MAPS,
    FINE_LAYERS,
    LEVEL_QUANTILE,
    STRUCTURE_BINS,
    AnomalyScorer,
    NormalStats,
    anomaly_map,
    area_evidence,
    blur_maps,
    colour_terms,
    combine,
    edge_strength,
    either_maps,
    fine_evidence,
    fit_map_scale,
    fit_normal_stats,
    lab_terms,
    opening,
    quantile,
    sharp_map,
    silhouette_evidence,
    squared_difference,
)


@pytest.fixture(scope="module")
def scorer() -> AnomalyScorer:
    return AnomalyScorer(FeatureExtractor())


def test_identical_images_score_zero(scorer: AnomalyScorer, lego_dir: Path) -> None:
    image = load_category(lego_dir, load_test=False).train[0].image[None]
    maps, scores = scorer(image, image)
    assert maps.shape == (1, 100, 100)
    assert scores.item() == pytest.approx(0.0, abs=1e-6)


def test_defect_peaks_where_it_is(scorer: AnomalyScorer, lego_dir: Path) -> None:
    cat = load_category(lego_dir, load_test=False)
    # Paint a blob onto a normal view and score it against the clean view.
    normal = cat.train[5].image.clone()
    defect = normal.clone()
    defect[40:50, 55:65] = torch.tensor([0.1, 0.2, 0.9])
    maps, scores = scorer(torch.stack([defect, normal]), torch.stack([normal, normal]))
    peak = divmod(int(maps[0].argmax()), 100)
    assert 38 <= peak[0] <= 52 and 53 <= peak[1] <= 67
    assert scores[0] > 10 * max(scores[1].item(), 1e-3)


def test_batch_equals_single_and_is_deterministic(scorer: AnomalyScorer) -> None:
    g = torch.Generator().manual_seed(0)
    q, r = torch.rand(3, 48, 64, 3, generator=g), torch.rand(3, 48, 64, 3, generator=g)
    maps, scores = scorer(q, r)
    single = torch.stack([scorer(q[i : i + 1], r[i : i + 1])[1][0] for i in range(3)])
    assert torch.allclose(scores, single, rtol=1e-4)
    assert torch.equal(scorer(q, r)[0], maps)
    assert maps.shape == (3, 48, 64)


def test_renders_are_clamped(scorer: AnomalyScorer) -> None:
    image = torch.rand(1, 32, 32, 3)
    over = image.clone()
    over[image > 0.9] = 1.7  # an unclamped render would differ here
    assert torch.equal(scorer(image, over)[0], scorer(image, over.clamp(0, 1))[0])


def test_tolerant_difference_ignores_small_shifts() -> None:
    a = torch.zeros(1, 2, 12, 12)
    a[:, :, 5, 5] = 1.0
    b = torch.roll(a, shifts=1, dims=-1)
    assert squared_difference(a, b, 0).sum() == 4.0
    assert squared_difference(a, b, 1).sum() == 0.0
    c = torch.roll(a, shifts=3, dims=-1)
    assert squared_difference(a, c, 1).sum() > 0


def test_bad_shapes_rejected(scorer: AnomalyScorer) -> None:
    with pytest.raises(ValueError):
        scorer(torch.rand(1, 32, 32, 3), torch.rand(1, 30, 32, 3))
    with pytest.raises(ValueError):
        scorer(torch.rand(32, 32, 3), torch.rand(32, 32, 3))


def test_config_round_trip_rebuilds_the_same_scorer(scorer: AnomalyScorer) -> None:
    cfg = scorer.config()
    assert cfg == {"extractor": "tf_efficientnet_lite0", "weights": "imagenet", "layers": [0, 1, 2, 3],
                   "size": 224, "sigma": 4.0, "tolerance": 1}
    rebuilt = AnomalyScorer.from_config(cfg)
    q, r = torch.rand(2, 40, 40, 3), torch.rand(2, 40, 40, 3)
    assert torch.equal(rebuilt(q, r)[1], scorer(q, r)[1])
    exact = AnomalyScorer.from_config({**cfg, "tolerance": 0})
    assert not torch.equal(exact(q, r)[1], scorer(q, r)[1])


def test_silhouette_evidence_marks_outline_changes_beyond_a_pixel() -> None:
    ref = torch.ones(1, 3, 32, 32)
    ref[:, :, 8:24, 8:24] = 0.2  # a square object on white
    query = ref.clone()
    query[:, :, 15:17, 24:30] = 0.2  # a burr growing out of the right side
    query[:, :, 8:12, 8:12] = 1.0  # a missing corner
    shifted = torch.roll(ref, 1, dims=-1)  # the whole object one pixel off: tolerated
    ev = silhouette_evidence(torch.cat([query, shifted]), torch.cat([ref, ref]), (1.0, 1.0, 1.0))
    assert ev[1].sum() == 0
    assert ev[0, 15:17, 26:30].all() and ev[0, 15:17, 24].sum() == 0  # beyond the 1 px band only
    assert ev[0, 9:11, 9:11].all() and ev[0, 20:30, 0:8].sum() == 0


def test_combinations_fit_their_normal_statistics_and_travel_in_the_config() -> None:
    torch.manual_seed(0)
    terms = torch.rand(6, 5, 16, 16) * torch.tensor([1.0, 10, 100, 1000, 10000]).view(1, 5, 1, 1)
    sil = (torch.rand(6, 16, 16) > 0.95).float()
    assert torch.equal(combine(terms, "peers"), terms.sum(1))
    with pytest.raises(ValueError, match="normal statistics"):
        combine(terms, "silhouette")
    with pytest.raises(ValueError, match="unknown combination"):
        combine(terms, "balanced")
    stats = fit_normal_stats(terms)
    # Every term brought to the same scale, whatever its own; the silhouette weighs as all of them.
    assert len(stats.term_scales) == 5 and stats.term_scales[4] > 1000 * stats.term_scales[0]
    scaled = terms / torch.tensor(stats.term_scales).view(1, 5, 1, 1)
    assert float(torch.quantile(scaled[:, 0].flatten(), 0.99)) == pytest.approx(1.0, rel=1e-3)
    assert torch.allclose(combine(terms, "silhouette", stats, sil), scaled.sum(1) + 5 * sil)
    scorer = AnomalyScorer(FeatureExtractor(weights="random"), combination="silhouette", stats=stats,
                           background=(1.0, 1.0, 1.0))
    again = AnomalyScorer.from_config(json.loads(json.dumps(scorer.config())))
    assert again.combination == "silhouette" and again.stats == stats and again.background == (1.0, 1.0, 1.0)
    assert "combination" not in AnomalyScorer(FeatureExtractor(weights="random")).config()  # the peers' reads as before
    stale = {**scorer.config(), "stats": {"term_scales": [1.0] * 5, "structure_edges": []}}
    with pytest.raises(ValueError, match="rerun the calibration"):
        AnomalyScorer.from_config(stale)
    with pytest.raises(ValueError, match="unknown combination"):
        AnomalyScorer(FeatureExtractor(weights="random"), combination="balanced")


def assert_a_dark_patch_scores_above_a_clean_copy(scorer: AnomalyScorer) -> None:
    """End to end: of two grey queries against grey references, the one with a dark patch
    scores higher, and the maps come back at the queries' size."""
    query = torch.full((2, 48, 48, 3), 0.5)
    reference = query.clone()
    query[0, 20:28, 20:28] = 0.0  # a dark patch on the first query only
    maps, scores = scorer(query, reference)
    assert maps.shape == (2, 48, 48) and float(scores[0]) > float(scores[1])


def test_structure_divides_by_the_normal_residual_of_each_edge_decile() -> None:
    """``structure``: where the renders of normal views are always off (strong edges), a
    residual counts for less; each decile's normal 99th percentile becomes 1."""
    torch.manual_seed(0)
    edges = torch.rand(8, 16, 16)
    terms = torch.rand(8, 5, 16, 16) * (1 + 9 * edges)[:, None]  # normal residual grows with the structure
    sil = torch.zeros(8, 16, 16)
    stats = fit_normal_stats(terms, sil, edges)
    assert len(stats.edge_bins) == STRUCTURE_BINS - 1 and len(stats.edge_scales) == STRUCTURE_BINS
    assert stats.edge_scales == sorted(stats.edge_scales) and stats.edge_scales[-1] > 3 * stats.edge_scales[0]
    normalised = combine(terms, "structure", stats, sil, edges)
    which = torch.bucketize(edges, torch.tensor(stats.edge_bins))
    for b in range(STRUCTURE_BINS):
        assert quantile(normalised[which == b], 0.99) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="edge"):
        combine(terms, "structure", stats, sil)  # no edge strength
    with pytest.raises(ValueError, match="edge scales"):
        combine(terms, "structure", fit_normal_stats(terms), sil, edges)  # statistics without structure's
    with pytest.raises(ValueError, match="silhouette"):
        fit_normal_stats(terms, None, edges)
    # A flat reference has no edges; a step has them along the step only.
    step = torch.zeros(1, 3, 32, 32)
    step[..., 16:] = 1.0
    e = edge_strength(step)
    assert float(e[0, :, :8].max()) < 0.01 and float(e[0, :, 14:18].min()) > 0.1  # (kornia adds eps 1e-6 under the root)
    # The statistics travel in the config, and the scorer runs the combination end to end.
    scorer = AnomalyScorer(FeatureExtractor(weights="random"), size=64, combination="structure", stats=stats)
    again = AnomalyScorer.from_config(json.loads(json.dumps(scorer.config())))
    assert again.combination == "structure" and again.stats == stats
    with pytest.raises(ValueError, match="rerun the calibration"):  # a structure config without its statistics
        AnomalyScorer.from_config({**scorer.config(), "stats": {"term_scales": stats.term_scales}})
    assert_a_dark_patch_scores_above_a_clean_copy(again)


def test_either_keeps_what_the_structure_division_takes_away() -> None:
    """``either``: the larger of the ``structure`` and ``silhouette`` maps, each over its normal
    level, its ``LEVEL_QUANTILE`` image score on the normal views, so that both count from the
    same normal footing and a defect either of them sees above it is seen."""
    torch.manual_seed(0)
    edges = torch.rand(40, 16, 16)
    terms = torch.rand(40, 5, 16, 16) * (1 + 9 * edges)[:, None]  # normal residual grows with the structure
    sil = torch.zeros(40, 16, 16)
    with pytest.raises(ValueError, match="anomaly_map"):
        combine(terms, "either", fit_normal_stats(terms, sil, edges), sil, edges)
    assert fit_normal_stats(terms, sil, edges).levels == []  # only with the blur's sigma
    stats = fit_normal_stats(terms, sil, edges, sigma=1.0)
    assert len(stats.levels) == len(EITHER_MAPS) and all(v > 0 for v in stats.levels)
    for c, level in zip(("structure", "silhouette"), stats.levels):
        scores = blur_maps(combine(terms, c, stats, sil, edges), 1.0).flatten(1).amax(1) / level
        assert quantile(scores, LEVEL_QUANTILE) == pytest.approx(1.0, rel=1e-4)
    assert stats.colours == 1  # the default: one colour term (rgb)
    for square, level in zip((3, 5), stats.levels[2:]):
        area = blur_maps(area_evidence(terms, stats, square), 1.0).flatten(1).amax(1) / level
        assert quantile(area, LEVEL_QUANTILE) == pytest.approx(1.0, rel=1e-4)
    fine = blur_maps(fine_evidence(terms, stats), 1.0).flatten(1).amax(1) / stats.levels[4]
    assert quantile(fine, LEVEL_QUANTILE) == pytest.approx(1.0, rel=1e-4)
    # A residual on the strongest structure of a normal view, then the same on its flattest
    # pixel: ``structure`` divides the first by its decile's large normal residue, and the
    # flat one stands out in it more; ``either`` is the larger of the two maps, pixel by pixel.
    defect = terms[:2].clone()
    e = edges[:2]
    strong, flat = int(e[0].flatten().argmax()), int(e[1].flatten().argmin())
    defect[0].view(5, -1)[:, strong] += 20.0
    defect[1].view(5, -1)[:, flat] += 20.0
    amap = anomaly_map(defect, "either", stats, sil[:2], e, 1.0)
    s_map = blur_maps(combine(defect, "structure", stats, sil[:2], e), 1.0) / stats.levels[0]
    h_map = blur_maps(combine(defect, "silhouette", stats, sil[:2]), 1.0) / stats.levels[1]
    a_map = torch.maximum(*(blur_maps(area_evidence(defect, stats, k), 1.0) / level
                            for k, level in zip((3, 5), stats.levels[2:4])))
    f_map = blur_maps(fine_evidence(defect, stats), 1.0) / stats.levels[4]
    four = torch.maximum(torch.maximum(s_map, h_map), a_map)
    assert torch.equal(amap, torch.maximum(four, f_map))
    struct, silh, either = (m.flatten(1).amax(1) for m in (s_map, h_map, amap))
    assert float(struct[1]) > 2 * float(struct[0])
    assert torch.equal(either, torch.maximum(four, f_map).flatten(1).amax(1))
    assert (either > 1.0).all()
    # A bundle calibrated before the area maps carries two levels and is scored with two maps;
    # one calibrated before the fine map (session 20) carries four and is scored with four.
    two = NormalStats(**{**asdict(stats), "levels": stats.levels[:2]})
    assert torch.equal(anomaly_map(defect, "either", two, sil[:2], e, 1.0), torch.maximum(s_map, h_map))
    four_levels = NormalStats(**{**asdict(stats), "levels": stats.levels[:4]})
    assert torch.equal(anomaly_map(defect, "either", four_levels, sil[:2], e, 1.0), four)
    three_levels = NormalStats(**{**asdict(stats), "levels": stats.levels[:3]})
    with pytest.raises(ValueError, match="normal levels"):  # three levels: no calibration method wrote that
        anomaly_map(defect, "either", three_levels, sil[:2], e, 1.0)
    fx = FeatureExtractor(weights="random")
    assert len(AnomalyScorer(fx, size=64, combination="either", stats=four_levels).stats.levels) == 4
    with pytest.raises(ValueError, match="normal levels"):
        AnomalyScorer(fx, size=64, combination="either", stats=three_levels)
    # A residual in the two finest feature layers alone, the size of a part gone: the fine map
    # sees it over its level, and the maximum takes it where the other four stay lower.
    fine_only = terms[:1].clone()
    fine_only[0, 1:3, 6:9, 6:9] += 5.0 * torch.tensor(stats.term_scales[1:3]).view(2, 1, 1)
    f_only = blur_maps(fine_evidence(fine_only, stats), 1.0) / stats.levels[4]
    both = anomaly_map(fine_only, "either", stats, sil[:1], edges[:1], 1.0)
    without = anomaly_map(fine_only, "either", four_levels, sil[:1], edges[:1], 1.0)
    assert float(f_only.max()) > 1.0 and float(both.max()) == pytest.approx(float(f_only.max()))
    assert float(both.max()) > float(without.max())
    with pytest.raises(ValueError, match="edge strength"):
        anomaly_map(defect, "either", stats, sil[:2])
    # The levels travel in the config; a config of the combinations before it still loads.
    scorer = AnomalyScorer(FeatureExtractor(weights="random"), size=64, combination="either", stats=stats)
    again = AnomalyScorer.from_config(json.loads(json.dumps(scorer.config())))
    assert again.combination == "either" and again.stats.levels == stats.levels
    old = {**scorer.config(), "combination": "structure", "stats": {k: v for k, v in scorer.config()["stats"].items()
                                                                    if k != "levels"}}
    assert AnomalyScorer.from_config(old).combination == "structure"
    with pytest.raises(ValueError, match="rerun the calibration"):  # either without its levels
        AnomalyScorer.from_config({**old, "combination": "either"})
    assert_a_dark_patch_scores_above_a_clean_copy(again)


def test_lab_colour_terms_split_lightness_from_chroma() -> None:
    """``colour="lab"``: the colour term becomes two, the squared CIELAB L* difference and the
    squared a*b* difference. A grey change of brightness moves L* alone; a change of hue at
    the same lightness moves mostly a*b*. The choice travels in the config, and an RGB
    scorer's config reads as it did before."""
    grey = torch.full((1, 3, 8, 8), 0.5)
    brighter = torch.full((1, 3, 8, 8), 0.6)
    t = lab_terms(brighter, grey)
    assert t.shape == (1, 2, 8, 8) and float(t[0, 0].mean()) > 10 and float(t[0, 1].max()) < 1e-3
    yellow, ochre = torch.tensor([0.9, 0.8, 0.1]), torch.tensor([0.9, 0.6, 0.4])  # paint on a yellow brick
    t = lab_terms(ochre.view(1, 3, 1, 1).expand(1, 3, 4, 4), yellow.view(1, 3, 1, 1).expand(1, 3, 4, 4))
    assert float(t[0, 1].mean()) > 10 * float(t[0, 0].mean())
    fx = FeatureExtractor(weights="random")
    query, reference = torch.rand(2, 40, 40, 3), torch.rand(2, 40, 40, 3)
    rgb, lab = AnomalyScorer(fx, size=32), AnomalyScorer(fx, size=32, colour="lab")
    assert rgb.terms(query, reference).shape[1] + 1 == lab.terms(query, reference).shape[1]
    assert torch.equal(lab.terms(query, reference)[:, 2:], rgb.terms(query, reference)[:, 1:])  # the same features
    stats = fit_normal_stats(lab.terms(query, reference))
    scorer = lab.with_stats(stats, "silhouette")
    again = AnomalyScorer.from_config(json.loads(json.dumps(scorer.config())))
    assert again.colour == "lab" and len(again.stats.term_scales) == 6
    assert "colour" not in rgb.config()
    with pytest.raises(ValueError, match="colour term"):
        AnomalyScorer(fx, colour="hsv")
    # End to end as the cpu preset scores: structure over the six terms, from its config. A
    # patch of another hue at the same lightness scores above a clean copy.
    clean = torch.full((4, 48, 48, 3), 0.5)
    terms = lab.terms(clean + 0.02 * torch.rand_like(clean), clean)
    stats = fit_normal_stats(terms, torch.zeros(4, 32, 32), lab.edges(clean))
    scorer = AnomalyScorer.from_config(json.loads(json.dumps(lab.with_stats(stats, "structure").config())))
    torch.manual_seed(1)
    queries = clean[:2] + 0.02 * torch.rand_like(clean[:2])  # two normal views, as noisy as the fitted ones
    queries[0, 18:30, 18:30] = torch.tensor([0.55, 0.45, 0.62])  # about L* 53 like the grey, but purple
    maps, scores = scorer(queries, clean[:2])
    assert scorer.colour == "lab" and maps.shape == (2, 48, 48) and float(scores[0]) > 3 * float(scores[1])


def test_the_area_map_keeps_what_fills_an_area_and_drops_thin_lines() -> None:
    """``area_evidence``: the opening of the colour terms over their normal scales. A 5 x 5
    patch keeps its full height; a one-pixel line of the same height, the thin residue that
    normal views leave along edges, is gone; the feature terms (after ``stats.colours``) are not read."""
    terms = torch.zeros(1, 4, 24, 24)
    terms[0, 0, 4:9, 4:9] = 6.0  # an area, in the first colour term
    terms[0, 1, 16, 2:22] = 6.0  # a thin line, in the second
    terms[0, 2:, 12, 12] = 50.0  # the feature layers' residue, which the area map does not read
    stats = NormalStats(term_scales=[2.0, 3.0, 1.0, 1.0], colours=2)
    area = area_evidence(terms, stats, 3)
    assert float(area[0, 4:9, 4:9].min()) == pytest.approx(3.0)  # 6 over its scale 2
    assert float(area[0, 14:19].abs().max()) == 0.0 and float(area[0, 12, 12]) == 0.0
    # The 5 x 5 square keeps the 5 x 5 patch and drops a strip 3 pixels wide, which the 3 x 3 keeps.
    strip = terms.clone()
    strip[0, 0, 18:21, 2:22] = 6.0
    assert float(area_evidence(strip, stats, 3)[0, 19, 12]) == pytest.approx(3.0)
    assert float(area_evidence(strip, stats, 5)[0, 19, 12]) == 0.0
    assert float(area_evidence(strip, stats, 5)[0, 4:9, 4:9].min()) == pytest.approx(3.0)
    assert torch.equal(opening(terms[:, 0], 3), terms[:, 0])  # an area wider than the square stays as it is
    # The separable opening is the pooled one (pixels outside the map left out), exactly.
    noise = torch.rand(3, 37, 41) * (torch.rand(3, 37, 41) > 0.5)
    for k in (1, 3, 5):
        pooled = F.max_pool2d(-F.max_pool2d(-noise[:, None], k, 1, k // 2), k, 1, k // 2)[:, 0]
        assert torch.equal(opening(noise, k), pooled)
    with pytest.raises(ValueError, match="odd side"):
        opening(noise, 4)
    with pytest.raises(ValueError, match="colour terms"):
        area_evidence(terms, NormalStats(term_scales=[1.0], colours=2), 3)
    assert colour_terms("lab") == 2 and colour_terms("rgb") == 1
    with pytest.raises(ValueError, match="unknown colour"):
        colour_terms("hsv")


def test_the_fine_map_reads_the_two_finest_feature_layers() -> None:
    """``fine_evidence``: the ``FINE_LAYERS`` feature terms right after the colour terms, each
    over its normal scale, summed; neither the colour terms nor the deeper layers are read."""
    terms = torch.zeros(1, 6, 8, 8)  # lab: L*, a*b*, then layers of strides 2, 4, 8 and 16
    terms[0, 0:2] = 9.0  # colour residue
    terms[0, 2, 1, 1] = 4.0  # stride 2
    terms[0, 3, 1, 1] = 6.0  # stride 4
    terms[0, 4:, 5, 5] = 50.0  # the deep layers' residue
    stats = NormalStats(term_scales=[1.0, 1.0, 2.0, 3.0, 1.0, 1.0], colours=2)
    fine = fine_evidence(terms, stats)
    assert FINE_LAYERS == 2 and float(fine[0, 1, 1]) == pytest.approx(4.0)  # 4 / 2 + 6 / 3
    assert float(fine[0, 5, 5]) == 0.0 and float(fine[0, 0, 0]) == 0.0
    rgb = NormalStats(term_scales=[1.0, 2.0, 3.0, 1.0, 1.0], colours=1)  # one colour term: the layers start one earlier
    assert float(fine_evidence(terms[:, 1:], rgb)[0, 1, 1]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="fine map needs"):
        fine_evidence(terms[:, :3], NormalStats(term_scales=[1.0, 1.0, 2.0], colours=2))


def test_a_lab_scorer_builds_its_area_map_from_both_colour_terms() -> None:
    """With the CIELAB terms (the cpu preset's), the statistics keep that the first two terms
    are colour terms, the scorer's ``area`` map reads both (a change in a*b* alone shows), and
    statistics fitted for another count of colour terms are refused."""
    torch.manual_seed(1)
    clean = torch.rand(6, 3, 64, 64)
    reference = (clean + 0.02 * torch.randn_like(clean)).clamp(0, 1)
    lab = AnomalyScorer(FeatureExtractor(weights="random"), size=64, colour="lab")
    terms, sil = lab.inputs(clean, reference)
    edges = lab.edges(reference)
    stats = fit_normal_stats(terms, sil, edges, sigma=1.0, colours=colour_terms("lab"))
    assert stats.colours == 2 and len(stats.levels) == len(EITHER_MAPS)
    scorer = AnomalyScorer(lab.extractor, size=64, sigma=1.0, combination="either", stats=stats, colour="lab")
    again = AnomalyScorer.from_config(json.loads(json.dumps(scorer.config())))
    assert again.stats.colours == 2
    query = clean[:1].clone()
    query[:, 1, 20:30, 20:30] = 1.0 - query[:, 1, 20:30, 20:30]  # a stain of 10 x 10 pixels
    q_terms, q_sil = lab.inputs(query, reference[:1])
    colour = q_terms[:, 0] / stats.term_scales[0] + q_terms[:, 1] / stats.term_scales[1]
    for k in (3, 5):
        assert torch.equal(area_evidence(q_terms, stats, k), opening(colour, k))
    maps, scores = scorer(query, reference[:1])
    manual = anomaly_map(q_terms, "either", stats, q_sil, lab.edges(reference[:1]), 1.0)
    assert torch.allclose(maps, manual) and float(scores[0]) == pytest.approx(float(manual.max()))
    with pytest.raises(ValueError, match="colour terms"):  # statistics of an RGB scorer, for a CIELAB one
        AnomalyScorer(lab.extractor, size=64, combination="either", stats=NormalStats(**{**asdict(stats), "colours": 1}),
                      colour="lab")
    with pytest.raises(ValueError, match="colours must name"):
        fit_normal_stats(terms, sil, edges, sigma=1.0, colours=0)


def test_the_map_of_its_own_blur_keeps_the_score_and_never_shows_more_than_it() -> None:
    """With ``map_sigma``, the score (and so the decision) is the map blurred with ``sigma``,
    exactly as without it; the map returned is the maps blurred with ``map_sigma`` over their own
    levels, times ``map_scale``, capped at the image's score. A thin defect keeps a sharper peak
    there, and no pixel of an image scores above the image."""
    torch.manual_seed(2)
    clean = torch.rand(8, 3, 64, 64)
    reference = (clean + 0.02 * torch.randn_like(clean)).clamp(0, 1)
    lab = AnomalyScorer(FeatureExtractor(weights="random"), size=64, sigma=4.0, colour="lab")
    terms, sil = lab.inputs(clean, reference)
    edges = lab.edges(reference)
    stats = fit_normal_stats(terms, sil, edges, sigma=4.0, colours=2, map_sigma=1.0)
    assert len(stats.map_levels) == len(stats.levels) == len(EITHER_MAPS) and stats.map_levels != stats.levels
    coarse, sharp = either_maps(terms, stats, sil, edges, 4.0, 1.0)
    stats.map_scale = fit_map_scale(coarse.flatten(1).amax(1), sharp.flatten(1).amax(1), 0.25)
    # On the normal views it was fitted on, the scaled sharp map's threshold is the score's.
    assert float(torch.quantile((sharp * stats.map_scale).flatten(1).amax(1).double(), 0.75)) == pytest.approx(
        float(torch.quantile(coarse.flatten(1).amax(1).double(), 0.75)))
    assert fit_map_scale(torch.zeros(4), torch.ones(4), 0.25) == 1.0 == fit_map_scale(torch.ones(4), torch.zeros(4), 0.25)
    plain = lab.with_stats(stats, "either")
    own = plain.with_stats(stats, map_sigma=1.0)
    assert own.with_stats(stats).map_sigma == 1.0 and own.with_stats(stats, map_sigma=None).map_sigma is None
    query = clean[:2].clone()
    query[0, :, 30:32, 10:50] = 0.0  # a thin dark line
    maps, scores = own(query, reference[:2])
    plain_maps, plain_scores = plain(query, reference[:2])
    assert torch.equal(scores, plain_scores)  # the decision is untouched
    assert (maps.flatten(1).amax(1) <= scores + 1e-6).all()  # never a pixel above its image's score
    q_terms, q_sil = lab.inputs(query, reference[:2])
    c, s = either_maps(q_terms, stats, q_sil, lab.edges(reference[:2]), 4.0, 1.0)
    assert torch.allclose(maps, sharp_map(s, stats.map_scale, scores))
    assert torch.equal(c.flatten(1).amax(1), scores)
    line = maps[0, 31, 10:50].mean() / maps[0, 20:24, 10:50].mean()
    assert line > plain_maps[0, 31, 10:50].mean() / plain_maps[0, 20:24, 10:50].mean()  # sharper across the line
    again = AnomalyScorer.from_config(json.loads(json.dumps(own.config())))
    assert again.map_sigma == 1.0 and again.stats.map_scale == stats.map_scale
    assert again.config() == own.config()
    assert "map_sigma" not in plain.config()  # a bundle without it reads and scores as before
    with pytest.raises(ValueError, match="rerun the calibration"):  # a map blur without its levels
        lab.with_stats(NormalStats(**{**asdict(stats), "map_levels": []}), "either", map_sigma=1.0)
    with pytest.raises(ValueError, match="need the score's blur"):
        fit_normal_stats(terms, sil, edges, colours=2, map_sigma=1.0)


def _stored_config() -> dict:
    """An ``either`` scorer's config as a bundle's calibration stores it (five terms: RGB and four layers)."""
    stats = NormalStats(term_scales=[1.0, 2.0, 3.0, 4.0, 5.0], edge_bins=[0.001] * 6 + [0.02, 0.04, 0.07],
                        edge_scales=[0.3] + [1.0] * 9, levels=[2.5, 17.7, 7.0, 1.2, 3.3], colours=1)
    return {"extractor": "tf_efficientnet_lite0", "weights": "random", "layers": [0, 1, 2, 3], "size": 64, "sigma": 4.0,
            "tolerance": 1, "combination": "either", "stats": asdict(stats), "background": [1.0, 1.0, 1.0]}


def _with(config: dict, **changes) -> dict:
    stats = {**config["stats"], **changes.pop("stats", {})}
    return {**config, "stats": stats, **changes}


@pytest.mark.parametrize("changes, field", [
    # Normal statistics: a level of 0 or below, or an infinite one, scored every defect 0.
    ({"stats": {"levels": [-1.0] * 5}}, "stats.levels"),
    ({"stats": {"levels": [float("inf")] * 5}}, "stats.levels"),
    ({"stats": {"levels": [0.0] * 5}}, "stats.levels"),
    ({"stats": {"levels": [1.0] * 3}}, "stats.levels"),
    ({"stats": {"term_scales": [float("nan")] * 5}}, "stats.term_scales"),
    ({"stats": {"term_scales": [-5.0] * 5}}, "stats.term_scales"),
    ({"stats": {"term_scales": [1.0] * 6}}, "stats.term_scales"),  # six terms for a five-term scorer
    ({"stats": {"edge_scales": [0.0] * 10}}, "stats.edge_scales"),
    ({"stats": {"edge_scales": [1.0] * 9}}, "stats.edge_scales"),
    ({"stats": {"edge_bins": [0.07, 0.04, 0.02] + [0.001] * 6}}, "stats.edge_bins"),
    ({"stats": {"edge_bins": [float("nan")] * 9}}, "stats.edge_bins"),
    ({"stats": {"colours": 6}}, "stats.colours"),
    ({"stats": {"map_levels": [1.0] * 4}}, "stats.map_levels"),  # not one per level
    ({"stats": {"map_levels": [0.0] * 5}}, "stats.map_levels"),
    ({"stats": {"map_scale": 0.0}}, "stats.map_scale"), ({"stats": {"map_scale": float("inf")}}, "stats.map_scale"),
    ({"map_sigma": 0.0}, "map_sigma"), ({"map_sigma": 100.0}, "map_sigma"), ({"map_sigma": "2"}, "map_sigma"),
    ({"map_sigma": 2.0, "combination": "structure"}, "map_sigma"),
    ({"map_sigma": 2.0}, "rerun the calibration"),  # a map blur, and no levels at it
    ({"layers": [0, 1, 2]}, "stats.term_scales"),  # the layers and the statistics disagree
    # The scorer's own settings.
    ({"size": 0}, "scorer.size"), ({"size": -8}, "scorer.size"), ({"size": 100_000}, "scorer.size"),
    ({"size": "224"}, "scorer.size"), ({"size": 224.7}, "scorer.size"), ({"sigma": float("nan")}, "sigma"),
    ({"sigma": -4.0}, "sigma"), ({"sigma": 1e6}, "sigma"), ({"tolerance": -3}, "tolerance"),
    ({"tolerance": 15}, "tolerance"),
    ({"background": [float("nan")] * 3}, "background"), ({"background": [1, 1, 1, 1, 1]}, "background"),
    ({"background": [7.0, -2.0, 0.5]}, "background"), ({"layers": [0, 1, 2, 99]}, "layers"),
    ({"layers": [3, 2, 1, 0]}, "layers"), ({"layers": []}, "layers"), ({"colour": "hsv"}, "colour"),
    ({"weights": "/etc/passwd"}, "weights"),
])
def test_a_stored_config_with_a_bad_field_is_refused_naming_it(changes: dict, field: str) -> None:
    """A bundle's scorer config (its calibration.json) is checked field by field before use."""
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        AnomalyScorer.from_config(json.loads(json.dumps(_with(_stored_config(), **changes))))


def test_a_stored_config_that_checks_out_loads_and_one_missing_a_part_does_not() -> None:
    again = AnomalyScorer.from_config(_stored_config())
    assert again.combination == "either" and again.stats.levels == [2.5, 17.7, 7.0, 1.2, 3.3] and again.size == 64
    with pytest.raises(ValueError, match="lacks"):
        AnomalyScorer.from_config({k: v for k, v in _stored_config().items() if k != "extractor"})
    with pytest.raises(ValueError, match="needs the normal statistics"):
        AnomalyScorer.from_config({**_stored_config(), "combination": "silhouette", "stats": None})
