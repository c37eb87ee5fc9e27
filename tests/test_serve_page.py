"""The web page in a real browser: headless Chromium (Debian's chromium + chromium-driver, via
selenium) loads `/` from a real service on 127.0.0.1, uploads images through the file input, and
the test reads the rendered result. `./dev/browser` (run by `./dev/test`) installs Chromium where
it can; this test skips, saying why, only where Chromium is absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import noise_image
from tests.serving import running_service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed (chromium and chromedriver not on PATH); ./dev/browser installs "
           "them with apt-get when run as root")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1200,900"]
WAIT_S = 60
MIKELS8 = {"amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"}


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="emoclip-chromium-", dir=tmp_path)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _pictures(folder: Path) -> list[Path]:
    good = folder / "sunset.jpg"
    noise_image(320, 240, seed=7).save(good, quality=90)
    bad = folder / "notes.jpg"
    bad.write_text("not a photo\n")
    return [good, bad]


@pytest.mark.slow
def test_page_uploads_an_image_and_shows_its_emotions(tiny, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    good, bad = _pictures(tmp_path)
    with running_service(tiny) as svc:
        browser.get(svc.url + "/")
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#taxonomy option")) > 1)
        options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#taxonomy option")]
        assert options[0] == "" and "emotionroi6" in options

        browser.find_element(By.ID, "file-input").send_keys(f"{good}\n{bad}")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result-card")) == 2
                   and not d.find_elements(By.CSS_SELECTOR, ".result-card.is-pending"))
        good_card, bad_card = browser.find_elements(By.CSS_SELECTOR, ".result-card")

        assert good_card.find_element(By.CSS_SELECTOR, ".name").text == "sunset.jpg"
        top = good_card.find_element(By.CSS_SELECTOR, ".top-label").text.lower()  # shown capitalised
        assert top in MIKELS8
        bars = good_card.find_elements(By.CSS_SELECTOR, ".bars:not(.all) .bar")
        assert len(bars) == 3 and bars[0].get_attribute("data-label") == top
        shown = [float(b.get_attribute("data-probability")) for b in bars]
        assert shown == sorted(shown, reverse=True) and 0 < shown[0] <= 1
        polarity = good_card.find_element(By.CSS_SELECTOR, ".level.polarity .level-label").text
        assert polarity.split()[0] in {"positive", "negative"}
        thumb = good_card.find_element(By.CSS_SELECTOR, "img.thumb")
        assert browser.execute_script("return arguments[0].naturalWidth", thumb) == 320

        everything = good_card.find_elements(By.CSS_SELECTOR, ".bars.all .bar")
        assert not everything[0].is_displayed()                  # the full distribution is on demand
        good_card.find_element(By.CSS_SELECTOR, "details.distribution summary").click()
        wait.until(ec.visibility_of(everything[0]))
        assert {b.get_attribute("data-label") for b in everything} == MIKELS8
        assert sum(float(b.get_attribute("data-probability")) for b in everything) == pytest.approx(1, abs=1e-4)

        assert "is-error" in bad_card.get_attribute("class")
        assert "not an image" in bad_card.find_element(By.CSS_SELECTOR, ".error").text
        assert "1 of 2 could not be tagged" in browser.find_element(By.ID, "status").text

        shot = os.environ.get("EMOCLIP_PAGE_SCREENSHOT")  # where to keep a picture of the page (optional)
        if shot:
            browser.save_screenshot(shot)

        # Own labels, typed in: the same image again under them.
        labels = browser.find_element(By.ID, "labels")
        labels.send_keys("calm, tense, joyful\n")
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".result-card.is-pending")
                   and d.find_elements(By.CSS_SELECTOR, ".result-card .top-label")
                   and d.find_elements(By.CSS_SELECTOR, ".result-card .top-label")[0].text.lower() in {"calm", "tense",
                                                                                               "joyful"})
        assert svc.sample("emoclip_images_total", outcome="tagged") == 2


@pytest.mark.slow
def test_page_asks_for_the_api_key_and_then_works(tiny, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from emoclip.serve.settings import ServeSettings

    good, _ = _pictures(tmp_path)
    with running_service(tiny, ServeSettings(api_key="page-key")) as svc:
        browser.get(svc.url + "/")
        wait = WebDriverWait(browser, WAIT_S)
        key = browser.find_element(By.ID, "api-key")
        wait.until(ec.visibility_of(key))                       # the page met a 401 and asks
        assert "API key" in browser.find_element(By.ID, "status").text
        key.send_keys("page-key\n")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#taxonomy option")) > 1)
        browser.find_element(By.ID, "file-input").send_keys(str(good))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result-card")
                   and not d.find_elements(By.CSS_SELECTOR, ".result-card.is-pending"))
        card = browser.find_element(By.CSS_SELECTOR, ".result-card")
        assert "is-error" not in card.get_attribute("class")
        assert card.find_element(By.CSS_SELECTOR, ".top-label").text.lower() in MIKELS8
        assert svc.sample("emoclip_errors_total", kind="unauthorized") >= 1
