"""Synthetic defects (training.defects) and `rpe-pad selfcheck` on a held-out calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.bundle import FILES, WORK_FILES
from models.images import load_rgb
from rpe_pad.cli import main
from training.defects import KINDS, STAIN_MIN_DELTA_E, delta_e, foreground, paint, visible
from training.splats import default_device

WHITE = (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def photo(lego_dir: Path) -> np.ndarray:
    return load_rgb(min((lego_dir / "train" / "good").glob("*.png")))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_exactly_its_mask(photo: np.ndarray, kind: str) -> None:
    rng = np.random.default_rng(0)
    out, mask = paint(photo, kind, WHITE, rng)
    changed = np.abs(out - photo).max(-1) > 2 / 255
    assert out.shape == photo.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    # Small and local: under 2 % of the image, every masked pixel changed, and (but for the
    # antialiased rims of a burr's strokes) nothing changed outside the mask.
    assert 4 <= mask.sum() < 0.02 * mask.size and changed[mask].all()
    assert (changed & ~mask).sum() <= 0.5 * mask.sum()
    fg = foreground(photo, WHITE)
    if kind == "stain":
        assert fg[mask].all()  # on the object, shape intact
    elif kind == "missing":
        assert fg[mask].all() and np.allclose(out[mask], 1.0)  # object pixels gone to the background
    else:
        assert (~fg[mask]).mean() > 0.5  # burrs grow out into the background


def test_stains_are_paint_or_a_translucent_film(photo: np.ndarray) -> None:
    """Half the stains blend the pixels towards one colour (an affine map per channel with
    slope 1 - strength in [0.15, 0.55]); the others are a film that only absorbs light, at
    most 60 % of it, and lets the structure under it show through."""
    paint_count = film_count = 0
    for seed in range(40):
        out, mask = paint(photo, "stain", WHITE, np.random.default_rng(seed))
        before, after = photo[mask].astype(np.float64), out[mask].astype(np.float64)
        slopes, residual = [], 0.0
        for c in range(3):
            design = np.stack([before[:, c], np.ones(len(before))], 1)
            coef, *_ = np.linalg.lstsq(design, after[:, c], rcond=None)
            slopes.append(coef[0])
            residual = max(residual, float(np.abs(design @ coef - after[:, c]).max()))
        if residual < 1e-4 and all(0.15 - 1e-4 <= a <= 0.55 + 1e-4 for a in slopes):
            paint_count += 1
        else:
            assert (after <= before + 1e-6).all() and (after >= 0.4 * before - 1e-6).all(), seed
            film_count += 1
    assert paint_count >= 10 and film_count >= 10, (paint_count, film_count)


def test_every_stain_is_visible(photo: np.ndarray) -> None:
    """The painter redraws a stain until its mean colour difference inside the mask reaches
    the floor; a change below the floor does not count, one above it does."""
    for seed in range(20):
        out, mask = paint(photo, "stain", WHITE, np.random.default_rng(seed))
        assert delta_e(out[mask], photo[mask]).mean() >= STAIN_MIN_DELTA_E, seed
    mask = foreground(photo, WHITE) & (np.arange(photo.shape[1])[None, :] < photo.shape[1] // 2)
    faint, strong = photo.copy(), photo.copy()
    faint[mask] *= 0.99  # 1 % darker: no inspector would see it
    strong[mask] = strong[mask] * 0.3 + np.float32([0.0, 0.7, 0.0])  # a green paint
    assert not visible("stain", photo, faint, mask) and visible("stain", photo, strong, mask)
    assert visible("burr", photo, faint, mask)  # the floor is the stains' alone
    # Paint on a white object blends towards its colour: the delta is the CIE76 distance.
    assert delta_e(np.float32([[1, 1, 1]]), np.float32([[0, 0, 0]]))[0] == pytest.approx(100, abs=0.5)


def test_paint_refuses_what_it_cannot_do(photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown defect kind"):
        paint(np.ones((32, 32, 3), np.float32), "dent", WHITE, np.random.default_rng(0))
    with pytest.raises(ValueError):
        paint(np.ones((32, 32, 3), np.float32), "stain", WHITE, np.random.default_rng(0))  # no object
    monkeypatch.setattr("training.defects.STAIN_MIN_DELTA_E", 500.0)  # more than any two colours differ
    with pytest.raises(ValueError, match="Delta E"):
        paint(photo, "stain", WHITE, np.random.default_rng(0))


def test_selfcheck_reports_the_operating_point(tiny_bundle: Path, tiny_release: Path, tiny_heldout_bundles: Path,
                                               tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle and its work folder with a held-out calibration: the self-check scores painted
    and clean copies of the held-out views against the calibration model, at the bundle's threshold."""
    quick = tmp_path / "quick"
    shutil.copytree(tiny_release, quick / tiny_release.name)
    shutil.copytree(tiny_bundle, quick / ".work" / tiny_release.name)
    assert main(["selfcheck", str(tiny_synth), "--bundles", str(quick)]) == 2  # quick calibration: no held-out views
    assert "held-out calibration" in capsys.readouterr().err
    out = tmp_path / "sc"
    code = main(["selfcheck", str(tiny_synth), "--bundles", str(tiny_heldout_bundles), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads((out / "selfcheck.json").read_text())
    assert report["device"] == str(default_device())  # where the calibration model rendered
    assert report["heldout_views"] == 2 and report["clean"] == 2 * 4 and report["defective"] == 2 * 3 * 2
    d = report["decision"]
    assert d["tp"] + d["fn"] == report["defective"] and d["fp"] + d["tn"] == report["clean"]
    assert 0 <= report["image_auroc"] <= 1 and 0 <= report["aupro"] <= 1 and set(report["per_kind"]) == set(KINDS)
    assert (out / "selfcheck.png").stat().st_size > 1000 and "image AUROC" in printed.out
    assert "threshold_range" not in report  # two held-out views: the calibration states no range
    md = (out / "selfcheck.md").read_text()  # what the estimate leaves out, with the jitter it used
    assert "90 % range" not in md
    assert "Not covered: the pose stages" in md and "jittered by 1.0 px" in md and "middle of the object" in md


def test_selfcheck_gives_the_recall_at_both_ends_of_the_thresholds_range(tiny_heldout_bundles: Path,
                                                                          tiny_synth: Path) -> None:
    """A calibration that states its threshold's range: the self-check measures the recall at
    both ends (the low end finds at least as much) and says which end is which."""
    from models.bundle import FILES
    from models.calibration import Calibration
    from training.selfcheck import SelfCheckConfig, heldout_views, markdown, measure

    bundle, category, scene, held = heldout_views(tiny_heldout_bundles, tiny_synth)
    calib = Calibration.model_validate_json((bundle / FILES["calibration"]).read_text())
    t = calib.threshold
    ranged = Calibration.model_validate({**calib.model_dump(), "rule": "false_alarm", "false_alarm_rate": 0.1,
                                         "threshold_range": (0.5 * t, 2.0 * t), "false_alarm_range": (0.0, 0.3)})
    report = measure(category, scene, held, ranged, SelfCheckConfig(), progress=False).report
    r, d = report["threshold_range"], report["decision"]
    assert r["threshold"] == pytest.approx([0.5 * t, 2.0 * t], rel=1e-3) and r["false_alarm_rate"] == [0.0, 0.3]
    assert r["recall"][0] <= d["recall"] <= r["recall"][1]  # [at the high end, at the low end]
    row = next(line for line in markdown(report).splitlines() if "90 % range" in line)
    assert f"recall here {r['recall'][1]} at the low end to {r['recall'][0]} at the high end" in row
    assert "30.0 % at the low end to 0.0 % at the high end" in row


def test_selfcheck_names_what_is_wrong(tiny_release: Path, tiny_heldout_bundles: Path, tiny_synth: Path,
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The category, the bundle it names, and the calibration model's key: each problem is one
    line that names the path, never a traceback or a blamed bundle for a missing category."""
    assert main(["selfcheck", str(tmp_path / "nowhere"), "--bundles", str(tiny_heldout_bundles)]) == 2
    assert "category folder does not exist" in capsys.readouterr().err
    other = tmp_path / "other_name"
    other.symlink_to(tiny_synth, target_is_directory=True)
    assert main(["selfcheck", str(other), "--bundles", str(tiny_heldout_bundles)]) == 2
    assert "no bundle for category 'other_name'" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(tiny_heldout_bundles, broken, symlinks=False)
    key = broken / ".work" / tiny_release.name / WORK_FILES["calibration_scene_key"]
    key.write_text("{}")
    assert main(["selfcheck", str(tiny_synth), "--bundles", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(key) in err and "not a calibration model's key" in err and "Traceback" not in err
    (broken / tiny_release.name / FILES["calibration"]).write_text("{")  # the bundle's own file, corrupted
    assert main(["selfcheck", str(tiny_synth), "--bundles", str(broken)]) == 2
    err = capsys.readouterr().err  # the bundle is checked whole before its key is read
    assert FILES["calibration"] in err and "the manifest says" in err


def test_a_defect_under_min_pixels_is_not_visible() -> None:
    from training.defects import MIN_PIXELS

    img = np.zeros((16, 16, 3), np.float32)
    out = img.copy()
    mask = np.zeros((16, 16), bool)
    mask[0, : MIN_PIXELS - 1] = True
    out[mask] = 1.0
    assert not visible("burr", img, out, mask) and not visible("missing", img, out, mask)
    mask[0, MIN_PIXELS - 1] = True
    out[mask] = 1.0
    assert visible("burr", img, out, mask)
