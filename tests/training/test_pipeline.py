"""`rpe-pad train`'s stage table: order, the one signature, dispatch, refusals."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest

from models.bundle import FILES, REPORTS, WORK_FILES
from training import pipeline
from training.pipeline import STAGES, TABLE, StageContext, run_train


def test_stages_are_the_table_in_order() -> None:
    assert STAGES == tuple(stage.name for stage in TABLE)
    assert STAGES == ("splats", "calibration", "rvss", "irprn", "gallery", "onnx", "bundle")
    assert len(set(STAGES)) == len(STAGES)
    assert all(stage.doc and "\n" not in stage.doc for stage in TABLE)


@pytest.mark.parametrize("stage", TABLE, ids=lambda s: s.name)
def test_every_stage_has_the_one_signature(stage: pipeline.Stage) -> None:
    sig = inspect.signature(stage.run)
    assert list(sig.parameters) == ["ctx"]
    assert sig.parameters["ctx"].annotation in (StageContext, "StageContext")
    assert sig.return_annotation in (dict, "dict")


def test_unknown_stages_and_presets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['fit'\]; available: \['splats',"):
        run_train(tmp_path / "nowhere", tmp_path, stages=["splats", "fit"])
    with pytest.raises(ValueError, match="unknown preset 'gpu'"):
        run_train(tmp_path / "nowhere", tmp_path, preset="gpu")
    for none in ([], [""], [" "]):  # `--stages ""` ran every stage
        with pytest.raises(ValueError, match=r"unknown stage\(s\) (none given|\[''\])"):
            run_train(tmp_path / "nowhere", tmp_path, stages=none)
    assert pipeline.check_stages([" splats", "bundle "]) == ["splats", "bundle"]
    assert not (tmp_path / pipeline.WORK).exists()  # refused before anything is written


def test_what_no_bundle_can_come_from_is_refused_before_any_stage(tiny_synth: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One training view (it crashed IRPRN after the fit), and a validation set without
    labelled test views, or with good views only (a crash in the calibration, after the fit)."""
    ran = []
    for stage in TABLE:
        monkeypatch.setitem(pipeline._BY_NAME, stage.name,
                            pipeline.Stage(stage.name, lambda ctx, n=stage.name: ran.append(n) or {}, stage.doc))
    one = tmp_path / "one"
    shutil.copytree(tiny_synth, one)
    transforms = one / "train" / "transforms.json"
    data = json.loads(transforms.read_text())
    transforms.write_text(json.dumps({**data, "frames": data["frames"][:1]}))
    with pytest.raises(ValueError, match="1 training view; a bundle needs at least 2"):
        run_train(one, tmp_path / "b", preset="demo")
    untested = tmp_path / "untested"
    shutil.copytree(tiny_synth, untested, ignore=shutil.ignore_patterns("test", "ground_truth"))
    goods = tmp_path / "goods"
    shutil.copytree(tiny_synth, goods)
    test = json.loads((goods / "test" / "transforms.json").read_text())
    (goods / "test" / "transforms.json").write_text(json.dumps(
        {**test, "frames": [f for f in test["frames"] if "/good/" in f["file_path"]]}))
    for folder in (d for d in (goods / "test").iterdir() if d.is_dir() and d.name != "good"):
        shutil.rmtree(folder)
    for validation, message in ((untested, "needs labelled test views"), (goods, "has good ones only")):
        with pytest.raises(ValueError, match=message):
            run_train(tiny_synth, tmp_path / "b", preset="demo", validation_dir=validation)
    assert not ran


def test_run_train_dispatches_by_the_table(tiny_synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, StageContext]] = []

    def fake(name: str):
        def run(ctx: StageContext) -> dict:
            seen.append((name, ctx))
            return {"category": ctx.category.name, "config": {"x": 1}, "skipped": name == "rvss"}
        return run

    for stage in TABLE:
        monkeypatch.setitem(pipeline._BY_NAME, stage.name, pipeline.Stage(stage.name, fake(stage.name), stage.doc))
    reports = run_train(tiny_synth, tmp_path, preset="demo", stages=["rvss", "splats"], progress=False)
    # The requested stages, in the order asked, each given the run's one context.
    assert [name for name, _ in seen] == ["rvss", "splats"] and list(reports) == ["rvss", "splats"]
    ctx = seen[0][1]
    assert seen[1][1] is ctx and ctx.preset == "demo" and ctx.bundles_dir == tmp_path
    assert ctx.work == pipeline.work_dir(tmp_path, ctx.category.name) == tmp_path / ".work" / ctx.category.name
    assert ctx.calibration == pipeline.CALIBRATION["demo"] and ctx.validation is None
    assert (ctx.rvss, ctx.irprn) == pipeline.irprn_config("demo")
    assert all(isinstance(r["stage_seconds"], float) for r in reports.values())
    # The closing summary, without the bulky fields, where models.bundle says.
    summary = json.loads((ctx.work / WORK_FILES["train_summary"]).read_text())
    assert set(summary) == {"rvss", "splats"} and "config" not in summary["rvss"] and summary["rvss"]["skipped"]


def test_the_stated_false_alarm_rate_reaches_the_calibration_stage(tiny_synth: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``false_alarm_rate`` (``rpe-pad train --false-alarm-rate``) replaces the preset's 2 % and
    nothing else of its calibration; the demo's quick rule and rates outside (0, 0.5) are refused
    before any stage runs."""
    seen: list[StageContext] = []
    monkeypatch.setitem(pipeline._BY_NAME, "calibration",
                        pipeline.Stage("calibration", lambda ctx: seen.append(ctx) or {}, "calibration"))
    run_train(tiny_synth, tmp_path, preset="cpu", stages=["calibration"], progress=False, false_alarm_rate=0.05)
    preset = pipeline.CALIBRATION["cpu"]
    assert preset.false_alarm_rate == 0.02 and seen[0].calibration.false_alarm_rate == 0.05
    assert seen[0].calibration == pipeline.replace(preset, false_alarm_rate=0.05)
    run_train(tiny_synth, tmp_path, preset="cpu", stages=["calibration"], progress=False)
    assert seen[1].calibration == preset
    for preset_name, rate, message in (("demo", 0.05, "use the cpu or paper preset"),
                                       ("cpu", 0.5, "above 0 and under 0.5"), ("paper", 0.0, "above 0 and under 0.5")):
        with pytest.raises(ValueError, match=message):
            run_train(tiny_synth, tmp_path / "no", preset=preset_name, stages=["calibration"], false_alarm_rate=rate)
    assert len(seen) == 2 and not (tmp_path / "no").exists()


def test_stage_paths_are_one_table() -> None:
    """Every stage output has one relative path; the bundle's files keep theirs in the work folder."""
    paths = [*FILES.values(), *WORK_FILES.values(), *REPORTS.values()]
    assert len(paths) == len(set(paths))
    assert all(not p.startswith("/") and ".." not in p for p in paths)
    assert all(p.startswith("reports/") for p in REPORTS.values())
    assert WORK_FILES["train_summary"] not in REPORTS.values()  # the summary is not copied into a bundle


def test_every_stage_that_fits_renders_or_trains_gets_the_runs_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--device`` reaches the splats, calibration, rvss, irprn and gallery stages (each
    stage's own test checks where it then runs)."""
    from types import SimpleNamespace
    from unittest.mock import Mock

    seen: dict[str, object] = {}

    def recorder(name: str):
        def run(*args, **kwargs) -> dict:
            seen[name] = kwargs.get("device")
            return {}
        return run

    names = ("run_splats_stage", "run_calibration_stage", "run_rvss_stage", "run_irprn_stage", "run_gallery_stage")
    for name in names:
        monkeypatch.setattr(pipeline, name, recorder(name))
    device = object()  # whatever the run resolved
    ctx = SimpleNamespace(**{**{field: Mock() for field in StageContext.__dataclass_fields__}, "device": device})
    for stage in TABLE:
        if stage.name in ("splats", "calibration", "rvss", "irprn", "gallery"):
            stage.run(ctx)
    assert seen == {name: device for name in names}
