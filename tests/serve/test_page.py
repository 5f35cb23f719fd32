"""The page at / in headless Chromium (Debian's chromium + chromium-driver, via Selenium).

The browser is not downloaded at test time: the test uses /usr/bin/chromium and its driver,
which ``.ci/run`` installs with apt. Without them (a machine set up by hand) it skips.
"""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest
from serve_checks import rle_to_mask

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


def _open_page(driver, base: str) -> None:
    """Loads / and waits for /metadata to be shown (it sets the default threshold)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/")
    WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element("id", "model").text)


def _wait_for_state(driver, states: set[str], timeout: float = 120) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") in states
    )
    return driver.find_element("tag name", "body").get_attribute("data-state")


def test_page_draws_what_predict_returns(server, browser, upload, tmp_path):
    base, _ = server
    data, image = upload
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    _open_page(browser, base)
    assert browser.find_element("id", "thresh").get_attribute("value") == "0.3"
    browser.find_element("id", "file").send_keys(str(path))
    assert _wait_for_state(browser, {"done", "error"}) == "done", browser.find_element(
        "id", "status"
    ).text
    shown = browser.execute_script("return window.maskrcnnResult")
    request = urllib.request.Request(
        f"{base}/predict", data=data, headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        direct = json.loads(response.read())
    assert shown["detections"] == direct["detections"] and len(direct["detections"]) > 0
    names = [e.text for e in browser.find_elements("css selector", "#detections .name")]
    assert names == [d["category_name"] for d in direct["detections"]]
    status = browser.find_element("id", "status").text
    assert f"{len(names)} detection" in status and "ms" in status
    assert "inference" in browser.find_element("id", "latency").text
    canvas = browser.execute_script(
        "const c = document.getElementById('canvas'); return [c.width, c.height];"
    )
    assert canvas == [image.shape[2], image.shape[1]]
    # Inside the first mask the canvas is the image blended with the mask colour.
    px, py = _a_mask_pixel(direct["detections"][0])
    painted = browser.execute_script(
        "const ctx = document.getElementById('canvas').getContext('2d');"
        "return Array.from(ctx.getImageData(arguments[0], arguments[1], 1, 1).data);",
        px,
        py,
    )
    original = [round(float(v) * 255) for v in image[:, py, px]]
    assert max(abs(a - b) for a, b in zip(painted[:3], original)) > 10


def _a_mask_pixel(record: dict) -> tuple[int, int]:
    """(x, y) of a pixel inside the record's mask, away from its box's outline."""
    mask = rle_to_mask(record["segmentation"])
    x, y, w, h = record["bbox"]
    ys, xs = mask.nonzero()
    inside = [
        (int(px), int(py))
        for px, py in zip(xs, ys)
        if x + 4 < px < x + w - 4 and y + 4 < py < y + h - 4
    ]
    assert inside, "the first mask has no pixel away from its box outline"
    return inside[len(inside) // 2]


def test_page_says_what_is_wrong_with_a_bad_file(server, browser, tmp_path):
    base, _ = server
    path = tmp_path / "notes.png"
    path.write_bytes(b"these are notes, not pixels")
    _open_page(browser, base)
    browser.find_element("id", "file").send_keys(str(path))
    assert _wait_for_state(browser, {"done", "error"}) == "error"
    assert "not an image" in browser.find_element("id", "status").text
