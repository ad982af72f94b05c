"""The operator's page in a real browser: headless Chromium driven by Selenium.

Shared by the browser tests (``tests/service/test_browser.py``) and
``rpe-pad lab screenshots`` (the pictures in docs/SERVICE.md). Chromium and chromedriver
come from Debian's packages (``apt-get install chromium chromium-driver``; ``.ci/run``
installs them); Selenium never downloads a browser here: the driver's path is given.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab.served import Service

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def find_chromium() -> tuple[str, str] | str:
    """(browser, driver) paths, or the reason they cannot be used."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    if browser is None or driver is None:
        return ("no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver; "
                ".ci/run installs them)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return browser, driver


@contextmanager
def chromium(browser: str, driver: str, width: int = 1280, height: int = 800) -> Iterator:
    """A headless Chromium at ``width x height`` CSS pixels, quit on leaving. Its temporary files
    (Chromium leaves a folder per start in the temporary folder) go to a folder of its own,
    removed with it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    with tempfile.TemporaryDirectory(prefix="rpepad-chromium-", ignore_cleanup_errors=True) as scratch:
        service = DriverService(executable_path=driver, env={**os.environ, "TMPDIR": scratch})
        session = webdriver.Chrome(service=service, options=options)
        try:
            yield session
        finally:
            session.quit()


class Page:
    """The operator's page, as a person uses it (the selectors are the page's own ids)."""

    def __init__(self, driver, url: str, timeout: float = 120):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url = driver, url
        self.wait = WebDriverWait(driver, timeout)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def open(self, path: str = "/", api_key: str | None = None) -> None:
        self.driver.get(self.url + path)
        if api_key is not None:
            self.wait.until(lambda d: self.find("#key-dialog").get_attribute("open") is not None)
            self.find("#key-input").send_keys(api_key)
            self.find("#key-form button[value=ok]").click()
        self.wait.until(lambda d: len(self.find_all("#category option")) > 0)

    def upload(self, *paths: Path) -> list:
        """Inspect ``paths``; the cards once every one has its answer (newest first)."""
        before = len(self.find_all("#results .card"))
        self.find("#files").send_keys("\n".join(str(Path(p).resolve()) for p in paths))
        self.wait.until(lambda d: len(self.find_all("#results .card")) == before + len(paths) and all(
            c.get_attribute("aria-busy") == "false" for c in self.find_all("#results .card")))
        return self.find_all("#results .card")[: len(paths)]

    def set_threshold(self, value: float) -> None:
        self.driver.execute_script(
            "const s = document.querySelector('#threshold'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input'));", str(value))

    def canvas_is_drawn(self, card, css: str) -> bool:
        """True when the card's canvas has pixels of more than one colour."""
        return bool(self.driver.execute_script(
            "const c = arguments[0].querySelector(arguments[1]); if (!c.width) return false;"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "for (let i = 4; i < d.length; i += 4) if (d[i] !== d[0] || d[i+1] !== d[1] || d[i+2] !== d[2]) return true;"
            "return false;", card, css))

    def image_loaded(self, card, css: str) -> bool:
        return bool(self.driver.execute_script(
            "const i = arguments[0].querySelector(arguments[1]); return i.complete && i.naturalWidth > 0;", card, css))


def screenshots(bundles: Path, queries: list[Path], out: Path, api_key: str | None = None) -> list[Path]:
    """Pictures of the page for the docs: inspect at 1280 x 800 and at tablet width,
    history, and a record's detail with feedback."""
    found = find_chromium()
    if isinstance(found, str):
        raise RuntimeError(found)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="rpepad-shots-") as tmp, \
            Service(bundles, Path(tmp), api_key, log=Path(tmp) / "serve.log") as service:
        for width, height, name in ((1280, 800, "page_inspect.png"), (820, 1180, "page_inspect_tablet.png")):
            with chromium(*found, width=width, height=height) as driver:
                page = Page(driver, service.url)
                page.open("/", api_key)
                page.upload(*queries)
                driver.execute_script("window.scrollTo(0, 0)")
                driver.save_screenshot(str(out / name))
                written.append(out / name)
                if width == 1280:
                    page.find("#nav-history").click()
                    page.wait.until(lambda d: len(page.find_all("#history-table tbody tr")) >= len(queries))
                    driver.save_screenshot(str(out / "page_history.png"))
                    page.find_all("#history-table tbody a")[0].click()
                    page.wait.until(lambda d: page.find("#feedback-form").is_displayed())
                    page.find("input[name=label][value=confirmed_defect]").click()
                    page.find("#feedback-note").send_keys("checked at the bench")
                    page.find("#feedback-by").send_keys("Ana (QA)")
                    page.find("#feedback-form button[type=submit]").click()
                    page.wait.until(lambda d: "saved" in page.find("#feedback-status").text)
                    driver.set_window_size(width, 1500)  # the whole record, top to feedback
                    driver.execute_script("window.scrollTo(0, 0)")
                    driver.save_screenshot(str(out / "page_detail.png"))
                    page.find("#nav-inspect").click()
                    driver.set_window_size(width, 1600)  # both cards
                    driver.save_screenshot(str(out / "page_inspect_full.png"))
                    written += [out / "page_history.png", out / "page_detail.png", out / "page_inspect_full.png"]
    return written
