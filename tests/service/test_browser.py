"""The operator's page in headless Chromium, against the real service on the tiny bundle.

The flow of a shift: open the page (it asks for the API key once), inspect a normal and a
defective part, move the threshold slider, see a bad file refused in place, open the
history, give feedback, restart the service, and find the record and the feedback again.
Skipped, with the reason, where Chromium, chromedriver or Selenium are missing; ``.ci/run``
installs them so CI always runs it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest

from lab.browser import Page, chromium, find_chromium
from lab.served import Service

FOUND = find_chromium()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=str(FOUND))
KEY = "line-7-key"


@pytest.fixture(scope="module")
def queries(tiny_synth: Path, tmp_path_factory) -> dict[str, Path]:
    """Training views, which the tiny bundle places well enough to pass the pose check (its
    test views mostly go to review): one as it is, one with a red square painted on."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("queries")
    views = sorted((tiny_synth / "train" / "good").glob("*.png"))
    good = views[1]
    painted = np.asarray(Image.open(views[2]).convert("RGB")).copy()
    painted[24:34, 24:34] = (230, 25, 25)
    defect = folder / "painted.png"
    Image.fromarray(painted).save(defect)
    bad = folder / "notes.png"
    bad.write_bytes(b"this is not a PNG")
    return {"good": good, "defect": defect, "bad": bad}


@pytest.fixture(scope="module")
def station(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory):
    """The service at a station: the tiny release, an API key, its own records. One start for
    this module; the shift restarts it."""
    data = tmp_path_factory.mktemp("station")
    key = data / "records.key"
    key.write_bytes(bytes(range(32)))
    service = Service(tiny_release.parent, data / "data", api_key=KEY, log=data / "serve.log",
                      RPEPAD_RECORDS_KEY_FILE=str(key)).start()
    yield service
    service.stop()


@pytest.fixture()
def driver():
    with chromium(*FOUND, width=1280, height=800) as d:
        yield d


def _verdict(card) -> str:
    return card.find_element("css selector", ".verdict").text.lower()


@pytest.mark.slow(seconds=55)
def test_a_shift_at_the_station(station: Service, queries: dict[str, Path], driver) -> None:
    service = station
    page = Page(driver, service.url)
    page.open("/", api_key=KEY)
    assert driver.execute_script("return sessionStorage.getItem('rpepad.apiKey')") == KEY

    defect_card, good_card = page.upload(queries["good"], queries["defect"])  # newest first
    scores = {}
    for name, card in (("good", good_card), ("defect", defect_card)):
        assert _verdict(card) in ("normal", "anomalous", "review"), card.text
        assert "threshold" in card.find_element("css selector", ".score").text
        assert page.canvas_is_drawn(card, "canvas.query") and page.canvas_is_drawn(card, "canvas.overlay")
        assert page.image_loaded(card, "img.reference")
        page.wait.until(lambda d, c=card: page.image_loaded(c, "img.gallery"))
        assert "matched gallery view" in card.text and " ms" in card.text
        scores[name] = float(card.get_attribute("data-score"))
    verdicts = {name: _verdict(card) for name, card in (("good", good_card), ("defect", defect_card))}
    assert set(verdicts.values()) != {"review"}, verdicts  # the slider below has a score to re-decide

    # The slider re-decides in the page, without a new request.
    slider = page.find("#threshold")
    low, high = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
    before = len(driver.execute_script("return performance.getEntriesByType('resource')"))
    for value in (low, high, (scores["good"] + scores["defect"]) / 2):
        page.set_threshold(value)
        for name, card in (("good", good_card), ("defect", defect_card)):
            if _verdict(card) != "review":
                assert _verdict(card) == ("anomalous" if scores[name] > value else "normal"), (name, value)
    assert len(driver.execute_script("return performance.getEntriesByType('resource')")) == before
    assert page.find("#threshold-default").text.startswith("default ")

    # A bad file gets the service's own message, in place; the page goes on.
    (bad_card,) = page.upload(queries["bad"])
    error = bad_card.find_element("css selector", ".error")
    assert error.is_displayed() and "not a decodable image" in error.text

    # History: both inspections, newest first; feedback on the defective one.
    page.find("#nav-history").click()
    page.wait.until(lambda d: len(page.find_all("#history-table tbody tr")) == 2)
    page.find_all("#history-table tbody a")[0].click()
    page.wait.until(lambda d: page.find("#feedback-form").is_displayed())
    record_url = driver.current_url
    assert queries["defect"].name in page.find("#detail-title").text
    page.wait.until(lambda d: all(i.get_attribute("naturalWidth") not in (None, "0")
                                  for i in page.find_all("#detail-body img")))
    assert "Pose check" in page.find("#detail-body").text  # passed or failed, with its figures
    assert "the bundle's calibrated one" in page.find("#detail-body").text  # uploaded before the slider moved
    assert "sealed, as written (record 1 of chain" in page.find("#detail-body").text  # the second inspection
    page.find("input[name=label][value=false_alarm]").click()
    page.find("#feedback-note").send_keys("glare on the stud")
    page.find("#feedback-by").send_keys("Ana")
    page.find("#feedback-form button[type=submit]").click()
    page.wait.until(lambda d: "false alarm" in page.find("#feedback-status").text)
    assert page.find("#feedback-status").text == "Feedback saved: false alarm by Ana."

    # Restart: the record and its feedback are still there.
    service.stop()
    service.start()
    driver.get(record_url)
    driver.refresh()
    page.wait.until(lambda d: "false alarm" in page.find("#feedback-status").text)
    assert page.find("input[name=label][value=false_alarm]").is_selected()
    assert page.find("#feedback-note").get_attribute("value") == "glare on the stud"
    # A wrong word is cleared; what was said stays in the history.
    page.find("#feedback-clear").click()
    page.wait.until(lambda d: "Feedback cleared" in page.find("#feedback-status").text)
    assert not page.find("input[name=label][value=false_alarm]").is_selected()
    assert "false alarm" in page.find("#feedback-history").text and "glare on the stud" in page.find("#feedback-history").text
    page.find("#nav-history").click()
    page.wait.until(lambda d: len(page.find_all("#history-table tbody tr")) == 2)

    # With the slider moved, a new inspection is decided, and recorded, at the slider's value;
    # moved again, the card says what its record holds.
    page.find("#nav-inspect").click()
    info = httpx.get(f"{service.url}/categories", headers={"X-API-Key": KEY}).json()["categories"][0]
    page.wait.until(lambda d: page.find("#threshold").get_attribute("min"))
    assert float(page.find("#threshold").get_attribute("min")) > info["score_floor"]  # the service's lowest
    page.set_threshold((scores["good"] + scores["defect"]) / 2)
    chosen = float(driver.execute_script("return document.querySelector('#threshold').value"))
    assert chosen != pytest.approx(info["threshold"])
    (card,) = page.upload(queries["good"])
    record_id = card.find_element("css selector", ".meta a").get_attribute("href").rsplit("/", 1)[-1]
    record = httpx.get(f"{service.url}/inspections/{record_id}", headers={"X-API-Key": KEY}).json()
    assert record["threshold"] == pytest.approx(chosen, rel=1e-9) and record["verdict"] == _verdict(card)
    assert "Recorded" not in card.find_element("css selector", ".score").text
    page.set_threshold(info["threshold"])
    assert f"Recorded: {record['verdict']} at threshold {chosen:.2f}" in card.find_element("css selector", ".score").text


def test_tablet_width_keeps_every_control_reachable(station: Service) -> None:
    """Also: Chromium's temporary folders go with it (this module is the only one that starts it)."""
    left = lambda: set(Path(tempfile.gettempdir()).glob("org.chromium.Chromium.*"))  # noqa: E731
    before = left()
    with chromium(*FOUND, width=768, height=1024) as d:
        page = Page(d, station.url)
        page.open("/", api_key=KEY)
        width = d.execute_script("return document.documentElement.clientWidth")
        for css in ("#category", "#threshold", "label[for=files]", "label[for=camera]", "#nav-history"):
            rect = page.find(css).rect
            assert rect["width"] > 0 and rect["x"] >= 0 and rect["x"] + rect["width"] <= width, css
        assert d.execute_script("return document.documentElement.scrollWidth") <= width
        for css in ("#category", "#threshold", "#files", "#camera"):  # each control has a label
            element_id = css[1:]
            assert page.find_all(f"label[for={element_id}]"), css
    assert left() <= before


@pytest.mark.slow(seconds=30)
def test_the_page_says_what_the_records_cannot_do(tiny_release: Path, queries: dict[str, Path], tmp_path: Path,
                                                  driver) -> None:
    data = tmp_path / "data"
    data.write_text("a file where the records' folder goes")  # records unavailable; inspections go on
    service = Service(tiny_release.parent, data, log=tmp_path / "serve.log").start()
    try:
        page = Page(driver, service.url)
        page.open("/")
        status = page.find("#service-status")
        page.wait.until(lambda d: "Inspection records: inspection records unavailable" in status.text)
        assert "error" in status.get_attribute("class").split()
        (card,) = page.upload(queries["good"])
        assert _verdict(card) in ("normal", "anomalous", "review") and "not recorded" in card.text
    finally:
        service.stop()


def test_long_names_and_impossible_dates_in_the_history(station: Service, queries: dict[str, Path], tmp_path: Path,
                                                        driver) -> None:
    long = tmp_path / ("part-" + "7" * 180 + ".png")
    long.write_bytes(queries["good"].read_bytes())
    page = Page(driver, station.url)
    page.open("/", api_key=KEY)
    page.upload(long)
    page.find("#nav-history").click()
    page.wait.until(lambda d: any("part-777" in r.text for r in page.find_all("#history-table tbody tr")))
    row = next(r for r in page.find_all("#history-table tbody tr") if "part-777" in r.text)
    link = row.find_element("css selector", "a")
    width = driver.execute_script("return document.documentElement.clientWidth")
    assert 0 <= link.rect["x"] and link.rect["x"] + link.rect["width"] <= width  # the name wraps; Open stays in view
    lines = driver.execute_script(  # the line boxes of each cell's text: only the file name's wrap
        "return [...arguments[0].cells].map(td => { const r = document.createRange(); r.selectNodeContents(td);"
        " return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size; });", row)
    assert lines[2] > 1 and all(n <= 1 for i, n in enumerate(lines) if i != 2), lines  # 0: no feedback yet

    # A year the records cannot hold: said in place, and the old table is not passed off as the answer.
    driver.execute_script("document.querySelector('#f-until').value = '20000-01-01'")
    assert page.find("#f-until").get_attribute("value") == "20000-01-01"
    page.find("#history-filters button[type=submit]").click()
    page.wait.until(lambda d: "not a date the records can hold" in page.find("#history-summary").text)
    assert not page.find_all("#history-table tbody tr")


def test_the_api_page_renders_offline(station: Service, driver) -> None:
    """/docs draws every operation from the service's own files (Swagger UI 5 reads the
    OpenAPI 3.1 the service publishes; version 4 showed "Unable to render this definition")."""
    driver.get(f"{station.url}/docs")
    page = Page(driver, station.url)
    page.wait.until(lambda d: len(page.find_all(".opblock")) >= 8)
    summaries = " ".join(e.text for e in page.find_all(".opblock-summary-path"))
    assert "/inspect" in summaries and "/inspections/{record_id}/feedback" in summaries
    assert "Unable to render" not in driver.find_element("css selector", "body").text
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(station.url) for url in loaded), loaded  # nothing from outside
