"""The interactive page in a real headless Chromium: it renders with no console errors and
no network, toggling an optimizer hides its path, and the step slider moves the paths.

Needs Debian's ``chromium`` and ``chromium-driver``; skipped (with the reason) without them.
Selenium is pointed at /usr/bin/chromedriver, so Selenium Manager never downloads anything.
"""

import io
import os
import shutil

import numpy as np
import pytest

from optimlab import landscape as L
from optimlab.landscape import Spec
from optimlab.landscape.html import write_html

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--window-size=1400,1000"]

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def severe(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_renders_toggles_and_steps(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    result = L.compare("rosenbrock", ["sgd", "momentum", Spec("adam", lr=0.05)], steps=50)
    page = write_html(result, tmp_path / "page.html", resolution=40)
    browser.get(page.as_uri())
    WebDriverWait(browser, 90).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    assert severe(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0, \
        "nothing fetched: plotly.js is inline"

    n = len(result)
    counts = browser.execute_script("""
        const c = document.getElementById('contour');
        return {svg: c.querySelectorAll('svg.main-svg').length,
                contourPaths: c.querySelectorAll('.contourlayer path').length,
                traces: c.querySelectorAll('.scatterlayer .trace').length,
                canvas: document.querySelectorAll('#surface canvas').length,
                note: !!document.getElementById('surface-note')};""")
    assert counts["svg"] >= 1 and counts["contourPaths"] > 10
    assert counts["traces"] == 2 * n + 2, "a path and a head per optimizer, start and minimum"
    assert counts["canvas"] >= 1 or counts["note"], "a 3-D view, or the note that WebGL is missing"
    picture = browser.find_element(By.ID, "contour").screenshot_as_png
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(picture)).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    assert colours > 50, "the contour is drawn, not blank"

    # toggle the second optimizer off: its path and head disappear from both plots
    browser.find_element(By.ID, "toggle-1").click()
    state = browser.execute_script("""
        const c = document.getElementById('contour');
        return {visible: window.landscapeState.visible, path: c.data[2].visible, head: c.data[2 + %d].visible,
                traces: c.querySelectorAll('.scatterlayer .trace').length};""" % n)
    assert state["visible"] == [True, False, True] and state["path"] is False and state["head"] is False
    assert state["traces"] == 2 * n, "two traces fewer in the drawing"

    # move the step slider to step 3 with the keyboard, as a user would
    slider = browser.find_element(By.ID, "step")
    slider.send_keys(Keys.HOME)
    for _ in range(3):
        slider.send_keys(Keys.ARROW_RIGHT)
    shown = browser.execute_script("""
        const c = document.getElementById('contour');
        return {step: window.landscapeState.step, label: document.getElementById('step-value').textContent,
                len: c.data[1].x.length, head: [c.data[1 + %d].x[0], c.data[1 + %d].y[0]]};""" % (n, n))
    assert shown["step"] == 3 and shown["label"] == "3" and shown["len"] == 4
    np.testing.assert_allclose(shown["head"], result["sgd"].points[3], atol=1e-6)

    # play advances the step on its own
    browser.find_element(By.ID, "play").click()
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return window.landscapeState.step") > 3)
    browser.find_element(By.ID, "toggle-1").click()
    assert browser.execute_script("return window.landscapeState.visible") == [True, True, True]
    assert severe(browser) == []
