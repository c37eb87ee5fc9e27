"""The browse page in real headless Chromium over a folder that `emoclip predict --save-features` wrote.

A few Emotion6 images are tagged for real (the tiny random-weight model) into a shard folder; one
file is then moved away. The page is served by uvicorn on 127.0.0.1; the test filters to one label,
sorts, runs a text search and a "more like this", opens the detail view and clicks a chart bar, and
checks every grid against the same query run through the Python API (``Browser.run``). Skips, saying
why, where Chromium or the Emotion6 images are absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from emoclip.browse.query import Query
from emoclip.cli.main import main
from tests.browsing import running_browse, tiny_browser
from tests.chromium import CHROMEDRIVER, CHROMIUM, WAIT_S, headless_chromium
from tests.conftest import EMOTION6, TINY_CLI

pytestmark = [
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="headless Chromium is not installed (./dev/browser)"),
    pytest.mark.skipif(not (EMOTION6 / "images").is_dir(), reason=f"Emotion6 images not found at {EMOTION6}"),
]
PER_CLASS = 4


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a throw-away profile (tests/chromium.py)."""
    with headless_chromium(tmp_path) as driver:
        yield driver


@pytest.fixture
def tagged(tmp_path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for folder in sorted((EMOTION6 / "images").iterdir()):
        for source in sorted(folder.glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(source, images / f"{folder.name}_{source.name}")
    out = tmp_path / "tagged"
    result = CliRunner().invoke(main, ["predict", str(images), *TINY_CLI, "--save-features", "--output-dir", str(out),
                                       "--shard-size", "7", "--no-progress"])
    assert result.exit_code == 0, result.output
    (images / "joy_1.jpg").rename(tmp_path / "moved.jpg")      # a row whose file moved after tagging
    return out


def _grid(driver) -> list[tuple[int, str]]:
    from selenium.webdriver.common.by import By

    return [(int(c.get_attribute("data-id")), c.get_attribute("data-label"))
            for c in driver.find_elements(By.CSS_SELECTOR, "#grid .card")]


def _settled(driver, before: str | None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d):
        grid = d.find_element(By.ID, "grid")
        ready = grid.get_attribute("data-ready")
        return ready and ready != before and d.find_element(By.ID, "status").text == "" and ready
    return WebDriverWait(driver, WAIT_S).until(done)


def _ids(answer) -> list[int]:
    return [r["id"] for r in answer.rows]


def test_page_filters_sorts_searches_and_matches_the_python_api(tagged, tiny, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    api = tiny_browser(tagged, tiny, tmp_path / "cache")
    shots = os.environ.get("EMOCLIP_BROWSE_SCREENSHOTS")     # a folder to keep pictures of the page in (optional)
    with running_browse(api) as url:
        browser.get(url + "/")
        ready = _settled(browser, None)
        assert len(_grid(browser)) == api.run(Query(limit=48)).total == 6 * PER_CLASS
        placeholder = WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".card .placeholder"))
        assert "file missing" in placeholder[0].text
        assert browser.execute_script("return document.querySelectorAll('.card img.thumb').length") >= 1

        label = _grid(browser)[0][1]
        Select(browser.find_element(By.ID, "label")).select_by_value(label)
        ready = _settled(browser, ready)
        expected = api.run(Query(labels=(label,), limit=48))
        assert [i for i, _ in _grid(browser)] == _ids(expected) and {lbl for _, lbl in _grid(browser)} == {label}

        Select(browser.find_element(By.ID, "sort")).select_by_value("awe")
        ready = _settled(browser, ready)
        assert [i for i, _ in _grid(browser)] == _ids(api.run(Query(labels=(label,), sort="awe", limit=48)))
        if shots:
            browser.save_screenshot(str(Path(shots) / "filtered-grid.png"))

        browser.find_element(By.ID, "text").send_keys("a calm evening by the sea\n")
        ready = _settled(browser, ready)
        hits = api.run(Query(text="a calm evening by the sea", labels=(label,), sort="awe", top=200, limit=48))
        assert hits.search == "exact" and [i for i, _ in _grid(browser)] == _ids(hits)
        assert "exact search" in browser.find_element(By.ID, "count").text

        first = browser.find_elements(By.CSS_SELECTOR, "#grid .card")[0]
        first_id = int(first.get_attribute("data-id"))
        first.find_element(By.CSS_SELECTOR, "button.like").click()
        ready = _settled(browser, ready)
        like = api.run(Query(like=first_id, labels=(label,), sort="awe", top=200, limit=48))
        assert [i for i, _ in _grid(browser)] == _ids(like) and first_id not in _ids(like)

        browser.find_elements(By.CSS_SELECTOR, "#grid .card")[0].click()
        detail = WebDriverWait(browser, WAIT_S).until(ec.visibility_of_element_located((By.ID, "detail")))
        WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail .dist .bar"))
        bars = browser.find_elements(By.CSS_SELECTOR, "#detail .dist .bar")
        assert len(bars) == len(api.layout.classes)
        assert sum(float(b.get_attribute("data-probability")) for b in bars) == pytest.approx(1, abs=1e-4)
        assert detail.find_elements(By.CSS_SELECTOR, ".level.polarity .bar")
        if shots:
            browser.save_screenshot(str(Path(shots) / "detail.png"))

        browser.find_element(By.ID, "clear-like").click()           # back to the folder, then a chart bar filters
        ready = _settled(browser, ready)
        browser.find_element(By.ID, "text").clear()
        Select(browser.find_element(By.ID, "label")).select_by_value("")
        ready = _settled(browser, ready)
        bar = browser.find_element(By.CSS_SELECTOR, f"#chart-labels .bar-row[data-label='{label}']")
        assert int(bar.get_attribute("data-count")) == api.stats(Query())["labels"][label]
        bar.click()
        _settled(browser, ready)
        assert Select(browser.find_element(By.ID, "label")).first_selected_option.get_attribute("value") == label
        if shots:
            browser.save_screenshot(str(Path(shots) / "chart.png"))
