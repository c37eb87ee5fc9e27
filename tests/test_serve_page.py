"""The web page in a real browser: headless Chromium (Debian's chromium + chromium-driver, via
selenium) loads `/` from a real service on 127.0.0.1, uploads images through the file input, and
the test reads the rendered result. `./dev/browser` (run by `./dev/test`) installs Chromium where
it can; this test skips, saying why, only where Chromium is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chromium import CHROMEDRIVER, CHROMIUM, WAIT_S, headless_chromium
from tests.conftest import noise_image
from tests.serving import running_service

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed (chromium and chromedriver not on PATH); ./dev/browser installs "
           "them with apt-get when run as root")
MIKELS8 = {"amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"}


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a throw-away profile (tests/chromium.py)."""
    with headless_chromium(tmp_path) as driver:
        yield driver


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
        top = good_card.get_attribute("data-label")  # shown as the verdict, or as "closest" when unclear
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
                   and d.find_elements(By.CSS_SELECTOR, ".result-card")
                   and d.find_elements(By.CSS_SELECTOR, ".result-card")[0].get_attribute("data-label") in {
                       "calm", "tense", "joyful"})
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
        assert card.get_attribute("data-label") in MIKELS8
        assert svc.sample("emoclip_errors_total", kind="unauthorized") >= 1


UNCERTAIN_MARGIN = 0.05   # app.js's: below this lead of the first label the page names no winner
LONG_LABEL = "an extraordinarily long custom label with many words about quiet nostalgic feelings"
UNBROKEN_LABEL = "x" * 95   # no place to break: must wrap anyway


def _fits(browser, element, container) -> bool:
    """``element`` is drawn inside ``container`` (1 px of rounding allowed)."""
    return browser.execute_script(
        "const a = arguments[0].getBoundingClientRect(), b = arguments[1].getBoundingClientRect();"
        "return a.left >= b.left - 1 && a.right <= b.right + 1;", element, container)


def test_page_tells_the_truth_random_weights_uncertainty_duplicates_long_labels(tiny, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    same = []
    for folder in ("a", "b", "c"):                              # three different files all named 10.jpg
        (tmp_path / folder).mkdir()
        same.append(tmp_path / folder / "10.jpg")
        noise_image(64, 48, seed=len(same)).save(same[-1], quality=90)
    with running_service(tiny) as svc:
        browser.get(svc.url + "/")
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#taxonomy option")) > 1)
        notice = browser.find_element(By.ID, "weights-notice")  # the tiny model's weights are random
        assert notice.is_displayed() and "random weights" in notice.text

        browser.find_element(By.ID, "labels").send_keys(f"calm, {LONG_LABEL}, {UNBROKEN_LABEL}")
        browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in same))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result-card")) == 3
                   and not d.find_elements(By.CSS_SELECTOR, ".result-card.is-pending"))
        cards = browser.find_elements(By.CSS_SELECTOR, ".result-card")
        names = [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards]
        assert len(set(names)) == 3 and all("10" in n and n.endswith(".jpg") for n in names), names

        for card in cards:
            assert "is-error" not in card.get_attribute("class")
            card.find_element(By.CSS_SELECTOR, "details.distribution summary").click()
            shown = sorted((float(b.get_attribute("data-probability"))
                            for b in card.find_elements(By.CSS_SELECTOR, ".bars.all .bar")), reverse=True)
            lead = shown[0] - shown[1]
            assert float(card.get_attribute("data-margin")) == pytest.approx(lead, abs=1e-9)
            verdict = card.find_element(By.CSS_SELECTOR, ".top-label").text
            if lead < UNCERTAIN_MARGIN:
                assert verdict == "No clear emotion"
                assert card.get_attribute("data-label") in card.find_element(By.CSS_SELECTOR, ".uncertain-note").text
            else:
                assert verdict.lower() == card.get_attribute("data-label").lower()
            body = card.find_element(By.CSS_SELECTOR, ".body")
            labels = card.find_elements(By.CSS_SELECTOR, ".bar-label")
            assert {LONG_LABEL, UNBROKEN_LABEL} <= {el.get_attribute("textContent") for el in labels}
            for element in [*labels, card.find_element(By.CSS_SELECTOR, ".top"),
                            card.find_element(By.CSS_SELECTOR, ".name")]:
                assert _fits(browser, element, body), element.get_attribute("textContent")
            assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", card)

        # Both sides of the rule, in the page's own code: a clear lead is named, a flat one is not.
        clear, flat = browser.execute_script("""
            const make = (dist) => {
              const card = makeCard(new Blob(["x"]), "synthetic.jpg");
              document.getElementById("results").append(card);
              const sorted = Object.entries(dist).sort((a, b) => b[1] - a[1]);
              fillCard(card, {label: sorted[0][0], probability: sorted[0][1], distribution: dist,
                              top_k: sorted.map(([label, probability]) => ({label, probability}))});
              return [card.querySelector(".top-label").textContent, card.classList.contains("is-uncertain")];
            };
            return [make({joy: 0.7, fear: 0.2, anger: 0.1}), make({joy: 0.35, fear: 0.33, anger: 0.32})];
        """)
        assert clear == ["joy", False] and flat == ["No clear emotion", True]


def test_page_shows_no_random_weights_notice_for_real_weights(tiny_other, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.serving import TINY_CONFIG

    config = TINY_CONFIG.replace(pretrained=str(tiny_other.weights.value))
    with running_service(tiny_other, config=config) as svc:
        browser.get(svc.url + "/")
        WebDriverWait(browser, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#taxonomy option")) > 1)
        assert not browser.find_element(By.ID, "weights-notice").is_displayed()
