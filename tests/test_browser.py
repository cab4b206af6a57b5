"""A real browser on the real page: headless Debian Chromium (Playwright's sync API) against `python app.py`.

The app runs as a subprocess with the tiny test checkpoints on a free loopback port. Screenshots of the
desktop and phone layouts go to $CBAM_VIZ_SCREENSHOTS (e.g. docs/screenshots to refresh the README's), else to a
temporary folder, so a test run leaves the work tree clean.
"""

from __future__ import annotations

import io
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbam_viz.io.images import load_image
from tests.apphelpers import app_process
from tests.conftest import CLASS_NAMES, attach_knn_detector

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("CBAM_VIZ_SCREENSHOTS") or Path(tempfile.gettempdir()) / "cbam_viz_screenshots")
EXAMPLE = ROOT / "examples" / "green_disc.png"
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.timeout(240)


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.geteuid() == 0 and os.environ.get("CI"):
        pytest.fail("/usr/bin/chromium is missing although CI runs as root: `make browser` should have installed it")
    pytest.skip("Debian chromium is not installed at /usr/bin/chromium: `sudo apt-get install chromium` to run this")


GREY = Image.new("RGB", (224, 168), (128, 128, 128))


@pytest.fixture(scope="module")
def app_url(tiny_checkpoints, tmp_path_factory):
    """The app on the tiny checkpoints, each given a familiarity detector to which EXAMPLE is familiar and a plain
    grey photo is not."""
    require_chromium()
    pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency (requirements-test.txt)")
    root = tmp_path_factory.mktemp("familiar-weights")
    paths = {}
    for key, src in tiny_checkpoints.items():
        paths[key] = root / src.name
        paths[key].write_bytes(src.read_bytes())
        attach_knn_detector(paths[key], [load_image(EXAMPLE)], unfamiliar=GREY)
    with app_process("--baseline", str(paths["baseline"]), "--cbam", str(paths["cbam"])) as app:
        yield app.url


def fetch_pixels(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.float32)


def wait_for_heatmaps(page) -> None:
    for key in ("baseline", "cbam"):
        page.wait_for_selector(f"#heatmap-{key} img[src]", timeout=TIMEOUT_MS)
        page.wait_for_function(
            "key => document.querySelector('#caption-' + key).innerText.includes('P = ')", arg=key, timeout=TIMEOUT_MS
        )


def upload(page, path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))


DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def open_with_image(browser, url: str, image: Path, options: dict):
    """A new page (`options`: DESKTOP or PHONE) at `url` with `image` uploaded and both heatmaps shown."""
    page = browser.new_page(**options)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    upload(page, image)
    wait_for_heatmaps(page)
    return page


def test_page_end_to_end(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = open_with_image(browser, app_url, EXAMPLE, DESKTOP)

            # what the models know, beside the upload; a bundled scene is familiar: no warning
            assert "know the 5 classes" in page.locator("#knowledge").inner_text()
            known = page.locator("#known-classes").inner_text()
            assert all(name in known for name in CLASS_NAMES), known
            assert not page.locator("#familiarity-banner").is_visible()

            # both models' top-5 and the paper-style caption under each heatmap
            for key in ("baseline", "cbam"):
                top5 = page.locator(f"#top5-{key}").inner_text()
                assert sum(name in top5 for name in CLASS_NAMES) == 5 and "%" in top5, top5
                assert "P = 0." in page.locator(f"#caption-{key}").inner_text()

            # the heatmaps are real images, not blank, and differ between the models
            srcs = {key: page.locator(f"#heatmap-{key} img").get_attribute("src") for key in ("baseline", "cbam")}
            pixels = {key: fetch_pixels(src) for key, src in srcs.items()}
            for key, array in pixels.items():
                assert array.shape == (168, 224, 3) and array.std() > 10, key
            assert np.abs(pixels["baseline"] - pixels["cbam"]).mean() > 1

            # CBAM internals: four stage maps and the channel plot
            for stage in ("layer1", "layer2", "layer3", "layer4"):
                page.wait_for_selector(f"#attention-{stage} img[src]")
            page.wait_for_selector("#channel-attention img")

            # localization: the example ships a mask, so both models get pointing-game and energy scores
            page.get_by_role("tab", name="Localization").click()
            page.wait_for_function("document.querySelector('#localization').innerText.includes('pointing game')")
            assert "Pearson r" in page.locator("#localization").inner_text()

            # switch the CAM method: the models rerun and the heatmaps change
            page.locator("#method input").click()
            page.get_by_role("option", name="HiResCAM").click()
            page.wait_for_function(
                "old => { const img = document.querySelector('#heatmap-baseline img');"
                " return document.querySelector('#heatmap-baseline').innerText.includes('HiResCAM')"
                " && img && img.src !== old; }",
                arg=srcs["baseline"],
            )
            assert fetch_pixels(page.locator("#heatmap-cbam img").get_attribute("src")).std() > 10

            # export the paper figure (PNG preview, PNG + PDF downloads)
            page.get_by_role("tab", name="Paper figure").click()
            page.locator("#export-figure").click()
            page.wait_for_selector("#figure-preview img[src]")
            page.wait_for_function("document.querySelector('#figure-files').innerText.includes('.pdf')")
            figure = fetch_pixels(page.locator("#figure-preview img").get_attribute("src"))
            assert figure.shape[1] > 1000 and figure.std() > 10

            page.get_by_role("tab", name="CBAM attention").click()
            page.wait_for_selector("#channel-attention img")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(SCREENSHOTS / "desktop.png"), full_page=True)

            # an unfamiliar photo: the warning names both models; the bundled scene again: it goes away
            grey = tmp_path / "grey.png"
            GREY.save(grey)
            upload(page, grey)
            banner = page.locator("#familiarity-banner")
            banner.wait_for(state="visible")
            assert "unfamiliar to ResNet50 and CBAM-ResNet50" in banner.inner_text()
            assert "not meaningful" in banner.inner_text()
            upload(page, EXAMPLE)
            banner.wait_for(state="hidden")

            # a file that is not an image: a clear message on the page, no traceback, no server path
            bad = tmp_path / "holiday.png"
            bad.write_bytes(b"GIF89a but not really")
            upload(page, bad)
            toast = page.locator(".toast-body").first
            toast.wait_for()
            text = toast.inner_text()
            assert "holiday.png is" in text and "Traceback" not in text and "/tmp" not in text, text

            # a phone-sized screen: everything stacks, nothing overflows sideways
            phone = open_with_image(browser, app_url, EXAMPLE, PHONE)
            phone.wait_for_selector("#channel-attention img")
            overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"the page is {overflow}px wider than a 390px phone screen"
            phone.screenshot(path=str(SCREENSHOTS / "phone.png"), full_page=True)
        finally:
            browser.close()
    assert (SCREENSHOTS / "desktop.png").stat().st_size > 10_000
    assert (SCREENSHOTS / "phone.png").stat().st_size > 10_000
