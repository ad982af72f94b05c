"""What /metrics counts of each answered image (``service.telemetry.Telemetry.observe``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.telemetry import Telemetry


def _result(verdict: str, misalignment: float | None, look: dict | None):
    refine = {"pnp_accepted": True} if look is None else {"pnp_accepted": True, "second_look": look}
    return SimpleNamespace(timings_ms={"refine": 20.0, "second_look": 0.0 if look is None else 900.0, "total": 300.0},
                           verdict=verdict, verification=SimpleNamespace(misalignment_px=misalignment), refine=refine)


def _value(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_second_looks_are_counted_by_outcome() -> None:
    t = Telemetry()
    t.observe("lego", _result("normal", 0.3, None))
    t.observe("lego", _result("anomalous", 0.4, {"tried": 3, "verified": 1, "candidate": 2, "first_reason": "off"}))
    t.observe("lego", _result("review", None, {"tried": 3, "verified": 0, "candidate": None, "first_reason": "off"}))
    t.observe("lego", _result("review", 7.0, {"tried": 3, "verified": 0, "candidate": None, "first_reason": "off"}))
    text = t.render().decode()
    assert _value(text, 'rpepad_second_looks_total{category="lego",outcome="rescued"}') == 1
    assert _value(text, 'rpepad_second_looks_total{category="lego",outcome="review"}') == 2
    assert _value(text, 'rpepad_images_inspected_total{category="lego",decision="review"}') == 2
    assert _value(text, 'rpepad_misalignment_pixels_count{category="lego"}') == 3  # the query without a measure is not
    assert _value(text, 'rpepad_stage_seconds_count{stage="second_look"}') == 4


def test_stage_seconds_are_seconds() -> None:
    t = Telemetry()
    t.observe("lego", _result("normal", 0.3, None))
    t.observe("lego", _result("normal", 0.3, None))
    text = t.render().decode()
    assert _value(text, 'rpepad_stage_seconds_sum{stage="refine"}') == pytest.approx(0.04)  # 2 x 20 ms
    assert _value(text, 'rpepad_stage_seconds_bucket{le="0.025",stage="refine"}') == 2
