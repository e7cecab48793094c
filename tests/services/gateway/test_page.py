"""The page at / in a real headless Chromium: pick an image, see its boxes drawn — checked on a screenshot.

Driven by selenium through Debian's chromedriver (the browser and driver versions come as a pair from one
source package; with the driver's path given, Selenium Manager never tries to download one). The DOM says only
that the page thinks it drew; the screenshot's pixels say what a person sees: the image, and a red box where
the pass-through pipeline put it, with its label tab above.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.loadgen.passthrough import BOX
from tests.services.gateway.helpers import gateway_settings, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# No first-run, sync, component or background requests: the test box has no network beyond loopback.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=900,1000",
    "--hide-scrollbars",
    "--mute-audio",
]
IMG_W, IMG_H = 800, 600
CANVAS_W, CANVAS_H = 640, 480  # the page's canvas: the image is drawn at 0.8
SCALE = CANVAS_W / IMG_W

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (`make sysdeps` installs them)",
)


def grey_image(path: Path) -> Path:
    """Mid-grey with a blue disc: nothing near red, so red pixels are the page's drawing."""
    img = Image.new("RGB", (IMG_W, IMG_H), (128, 128, 128))
    ImageDraw.Draw(img).ellipse((300, 200, 500, 400), fill=(40, 60, 200))
    img.save(path, "PNG")
    return path


def is_red(p: tuple[int, ...]) -> bool:
    return p[0] >= 200 and p[1] <= 60 and p[2] <= 60


def check_screenshot(png: bytes) -> None:
    im = Image.open(io.BytesIO(png)).convert("RGB")
    assert im.size == (CANVAS_W, CANVAS_H), im.size
    px = im.load()
    reds = [(x, y) for y in range(CANVAS_H) for x in range(CANVAS_W) if is_red(px[x, y])]
    assert len(reds) > 1500, len(reds)  # a 4 px stroke around a 224x240 box is ~3,700 px, and the label tab
    x1, y1, x2, y2 = (v * SCALE for v in (BOX[0] * IMG_W, BOX[1] * IMG_H, BOX[2] * IMG_W, BOX[3] * IMG_H))
    xs, ys = [p[0] for p in reds], [p[1] for p in reds]
    assert abs(min(xs) - x1) <= 4 and abs(max(xs) - x2) <= 4 and abs(max(ys) - y2) <= 4, (min(xs), max(xs), max(ys))
    assert y1 - 24 <= min(ys) <= y1, min(ys)  # the label tab sits above the box
    inside = px[int(x1) + 12, int(y2) - 12]
    disc = px[int(400 * SCALE), int(300 * SCALE)]
    assert all(abs(c - 128) <= 8 for c in inside), inside  # the image itself was drawn, not only the box
    assert disc[2] > 150 and disc[0] < 90, disc
    assert not is_red(px[5, CANVAS_H - 5]) and not is_red(px[CANVAS_W - 5, 5])


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def drive(url: str, image: Path) -> tuple[bytes, str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(url)
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script("return document.body.dataset.state") in ("drawn", "error")
        )
        state = driver.execute_script("return document.body.dataset.state")
        assert state == "drawn", driver.find_element(By.ID, "err").text
        return driver.find_element(By.ID, "canvas").screenshot_as_png, driver.find_element(By.ID, "timing").text


def docs_operations(url: str) -> int:
    """Swagger UI's rendered operations: it draws them only once its script and the spec have loaded."""
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(url)
        return int(
            WebDriverWait(driver, 20).until(
                lambda d: d.execute_script("return document.querySelectorAll('.opblock').length")
            )
        )


async def test_the_page_draws_the_result_on_the_image(ns: str, tmp_path: Path) -> None:
    image = grey_image(tmp_path / "grey.png")
    async with serving(gateway_settings(ns)) as live:
        png, timing = await asyncio.to_thread(drive, live.url + "/", image)
    (tmp_path / "canvas.png").write_bytes(png)
    check_screenshot(png)
    assert "detector" in timing and "broker hops" in timing and "in the browser" in timing


async def test_the_docs_page_renders_without_a_cdn(ns: str) -> None:
    """The browser has no network beyond loopback: Swagger UI must come from the gateway itself."""
    async with serving(gateway_settings(ns), stages=False) as live:
        assert await asyncio.to_thread(docs_operations, live.url + "/docs") >= 3
