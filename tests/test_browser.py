"""The HTML report in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, which
`.ci/run` installs) loads it, every image decodes, the headline table is visible without scrolling, and a
screenshot is saved in the test's temporary folder."""

from __future__ import annotations

import importlib
import os
import shutil

import pytest

from test_report import make_db

report_mod = importlib.import_module("modelseal.bench.report")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; .ci/run installs it, so CI must have it")
        pytest.skip(msg)
    return path


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver") if not os.environ.get("CI") else \
        importlib.import_module("selenium.webdriver")
    chromium, driver_path = _need("chromium"), _need("chromedriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()  # ends the chromedriver and chromium processes this test started


def test_report_renders_in_headless_chromium(browser, tmp_path):
    db = make_db(tmp_path / "results.sqlite")
    page = report_mod.report(db, tmp_path / "report.html")
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);")
    assert len(images) == 4
    for complete, width, height, alt in images:
        assert complete and width >= 900 and height > 100, (alt, width, height)
    assert any("ROC curves" in alt for *_, alt in images)
    headline = browser.find_element("id", "headline-table")
    assert headline.is_displayed()
    rect = browser.execute_script(
        "const r = document.getElementById('headline-table').getBoundingClientRect();"
        "return [r.top, r.bottom, r.width, window.innerHeight];")
    top, bottom, width, viewport = rect
    assert 0 <= top < viewport and width > 300  # visible on the first screen, before any scrolling
    rows = headline.find_elements("tag name", "tr")
    assert len(rows) == 1 + 4  # header + one row per protection
    assert "removed by 1 of 3 attacks" in headline.text and "prune (amount=0.6)" in headline.text
    # the arena section: its table renders with one row per judged protection (locks have no ROC)
    arena = browser.find_element("id", "arena-table")
    browser.execute_script("arguments[0].scrollIntoView();", arena)
    assert arena.is_displayed() and "ROC AUC" in arena.text and "TPR at 1% FPR" in arena.text
    assert len(arena.find_elements("tag name", "tr")) == 1 + 3
    browser.execute_script("window.scrollTo(0, 0);")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    # the whole page too, for a person to look at
    full = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(int(full) + 100, 8000))
    browser.save_screenshot(str(tmp_path / "report-full.png"))
