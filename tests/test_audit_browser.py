"""The audit page in a real browser: headless Debian Chromium through Selenium, from a file:// URL.

Skipped where Selenium, chromium or chromedriver is missing; ``.ci/run`` installs them.
"""
import shutil

import numpy as np
import pytest

from helpers import DIGITS, ROOT
from onnxrap.cli import main

pytest.importorskip("jinja2")
webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver"),
              pytest.mark.slow]

N, WRONG = 30, [2, 5, 11, 17, 23]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """An audit of 30 digits of which 5 carry a wrong label, so that 'wrong' has members."""
    root = tmp_path_factory.mktemp("browser")
    data = np.load(ROOT / "models" / "digits_holdout.npz")
    y = data["y"][:N].copy()
    y[WRONG] = (y[WRONG] + 1) % 10
    np.savez(root / "mislabelled.npz", x=data["x"][:N], y=y)
    out = root / "report"
    assert main(["audit", str(DIGITS), str(root / "mislabelled.npz"), "-o", str(out), "--quiet", "--device", "cpu",
                 "--faithfulness", "4"]) == 0
    return out, y


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1300,1800",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def cards(driver):
    return driver.find_elements("css selector", "#gallery-cards figure.item")


def choose(driver, select_id, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def test_gallery_filters_sorting_images_and_console(report, browser, tmp_path):
    out, y = report
    browser.get((out / "index.html").as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert len(cards(browser)) == N
    assert browser.find_element("id", "count").text == f"{N} of {N} inputs"
    # worst first by default: the mislabelled inputs (wrong answers) lead the gallery and the worst-cases strip
    shown = cards(browser)
    assert sorted(int(c.get_attribute("data-index")) for c in shown[:len(WRONG)]) == WRONG
    worst = browser.find_elements("css selector", "#worst-cards figure.item")
    assert sorted(int(c.get_attribute("data-index")) for c in worst[:len(WRONG)]) == WRONG

    choose(browser, "f-right", "wrong")
    assert sorted(int(c.get_attribute("data-index")) for c in cards(browser)) == WRONG
    assert all("wrong" in c.get_attribute("class") for c in cards(browser))
    choose(browser, "f-right", "right")
    assert len(cards(browser)) == N - len(WRONG)
    choose(browser, "f-right", "")

    label = int(y[0])
    choose(browser, "f-label", str(label))
    assert {int(c.get_attribute("data-label")) for c in cards(browser)} == {label}
    assert len(cards(browser)) == int((y == label).sum())
    choose(browser, "f-label", "")
    predicted = cards(browser)[-1].get_attribute("data-pred")
    choose(browser, "f-pred", predicted)
    assert cards(browser) and {c.get_attribute("data-pred") for c in cards(browser)} == {predicted}
    choose(browser, "f-pred", "")

    choose(browser, "f-sort", "conf-desc")
    confidence = [float(c.get_attribute("data-confidence")) for c in cards(browser)]
    assert confidence == sorted(confidence, reverse=True) and len(set(confidence)) > 1
    choose(browser, "f-sort", "off-asc")
    off = [float(c.get_attribute("data-off")) for c in cards(browser)]
    assert off == sorted(off) and len(set(off)) > 1

    images = browser.execute_script(
        "return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
    assert len(images) > 2 * N  # gallery thumbnails, worst cases, class means, faithfulness and sanity plots
    assert [src for src, ok in images if not ok] == []
    assert "sanity/sanity.png" in [src for src, _ in images]
    sanity_rows = browser.find_elements("css selector", "#sanity table tr")
    assert [r.find_element("css selector", "td").text for r in sanity_rows[2:]] == ["rap"]
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
    browser.save_screenshot(str(tmp_path / "audit.png"))
    browser.find_element("id", "sanity").screenshot(str(tmp_path / "sanity.png"))
