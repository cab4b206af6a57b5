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
from matplotlib.colors import to_rgb
from PIL import Image

from cbam_viz.cam.figures import WARNING_COLOUR
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
EXAMPLE = ROOT / "tests" / "fixtures" / "scenes" / "green_disc.png"
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.timeout(240)


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.geteuid() == 0 and os.environ.get("CI"):
        pytest.fail("/usr/bin/chromium is missing although CI runs as root: `make browser` should have installed it")
    pytest.skip("Debian chromium is not installed at /usr/bin/chromium: `sudo apt-get install chromium` to run this")


GREY = Image.new("RGB", (224, 168), (128, 128, 128))
WARNING_RGB = 255 * np.array(to_rgb(WARNING_COLOUR), dtype=np.float32)  # the figure's mark of an unfamiliar row


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
    with app_process(
        "--baseline", str(paths["baseline"]), "--cbam", str(paths["cbam"]), "--examples", str(EXAMPLE.parent),
        "--slow-seconds", "1",  # ScoreCAM at layer4 (2048 passes per model) is always refused
    ) as app:
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


DESKTOP = {"viewport": {"width": 1440, "height": 1000}}
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
            for name, options in (("desktop", DESKTOP), ("phone", PHONE)):
                page_checks(browser, app_url, tmp_path, name, options)
        finally:
            browser.close()
    assert (SCREENSHOTS / "desktop.png").stat().st_size > 10_000
    assert (SCREENSHOTS / "phone.png").stat().st_size > 10_000


def page_checks(browser, app_url: str, tmp_path: Path, name: str, options: dict) -> None:
    """The whole page at one screen size: results, familiarity, attention scale, refusals, downloads, the figure,
    and what each size's layout promises."""
    page = browser.new_page(**options)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    # the empty page: a note where the answers will be, no grey placeholders
    assert page.locator("#results-empty").is_visible()
    assert not page.locator("#heatmap-baseline").is_visible() and not page.locator("#top5-cbam").is_visible()
    if options is DESKTOP:  # the controls start above the fold
        assert page.locator("#method").bounding_box()["y"] < DESKTOP["viewport"]["height"]
    upload(page, EXAMPLE)
    wait_for_heatmaps(page)
    assert not page.locator("#results-empty").is_visible()
    if options is PHONE:
        phone_layout_checks(page)

    # what the models know, beside the examples; a bundled scene is familiar: no warning
    assert "know the 5 classes" in page.locator("#knowledge").inner_text()
    page.get_by_role("button", name="The 5 classes").click()
    known = page.locator("#known-classes").inner_text()
    assert all(name in known for name in CLASS_NAMES), known
    assert not page.locator("#familiarity-banner").is_visible()
    for key in ("baseline", "cbam"):
        assert "familiar" in page.locator(f"#familiarity-{key} .gauge-familiar").inner_text()

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

    # the download is a PNG named after the photo, model, method and layer
    with page.expect_download() as download:
        page.locator("#heatmap-cbam a[download], #heatmap-cbam button[aria-label*=ownload]").first.click()
    assert download.value.suggested_filename == "green_disc_cbam-resnet50_gradcam_layer4.png"

    attention_checks(page)

    # localization: the example ships a mask, so both models get pointing-game and energy scores
    page.get_by_role("tab", name="Localization").click()
    page.wait_for_function("document.querySelector('#localization').innerText.includes('pointing game')")
    assert "Pearson r" in page.locator("#localization").inner_text()

    # switch the CAM method: the models rerun and the heatmaps change
    choose_method(page, "HiResCAM")
    page.wait_for_function(
        "old => { const img = document.querySelector('#heatmap-baseline img');"
        " return document.querySelector('#caption-baseline').innerText.includes('HiResCAM')"
        " && img && img.src !== old; }",
        arg=srcs["baseline"],
    )
    hires = page.locator("#heatmap-cbam img").get_attribute("src")
    assert fetch_pixels(hires).std() > 10

    # a refused slow method keeps the result on the page and puts the method control back
    choose_method(page, "ScoreCAM")
    toast = page.locator(".toast-body").filter(has_text="ScoreCAM at layer4")
    toast.wait_for()
    assert "over its limit" in toast.inner_text()
    page.wait_for_function("document.querySelector('#method input').value === 'HiResCAM'")
    kept = page.locator("#heatmap-cbam img").get_attribute("src")
    assert np.array_equal(fetch_pixels(kept), fetch_pixels(hires)), "the refusal changed the heatmap shown"
    assert "HiResCAM" in page.locator("#caption-cbam").inner_text()
    assert page.locator("#heatmap-cbam img").is_visible() and page.locator("#top5-cbam").is_visible()
    page.locator(".toast-close").first.click()

    page.get_by_role("tab", name="Attention").click()
    page.wait_for_selector("#channel-attention img")
    full_page_screenshot(page, SCREENSHOTS / f"{name}.png")

    figure_checks(page, tmp_path)

    # a file that is not an image: a clear message on the page, no traceback, no server path
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"GIF89a but not really")
    upload(page, bad)
    toast = page.locator(".toast-body").filter(has_text="holiday.png")
    toast.wait_for()
    text = toast.inner_text()
    assert "holiday.png is" in text and "Traceback" not in text and "/tmp" not in text, text


def choose_method(page, label: str) -> None:
    page.locator("#method input").click()
    page.get_by_role("option", name=label).first.click()


def attention_checks(page) -> None:
    """The spatial maps on one absolute 0-1 scale with a colour bar; a note under each nearly constant one."""
    page.get_by_role("tab", name="Attention").click()
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        page.wait_for_selector(f"#attention-{stage} img[src]", state="attached")
    page.wait_for_selector("#channel-attention img", state="attached")
    assert "0: position suppressed" in page.locator("#attention-colorbar").inner_text()
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        label = page.locator(f"#attention-{stage}").inner_text()
        low, high = (float(v) for v in label.split("Ms ")[1].split("–"))
        note = page.locator(f"#attention-note-{stage}").inner_text()
        assert ("nearly constant" in note) == (high - low < 0.1), (label, note)
    shown = page.locator("#attention-layer3 img").get_attribute("src")
    absolute = fetch_pixels(shown)
    page.locator("#stretch input").check()
    page.wait_for_function("document.querySelector('#attention-colorbar').innerText.includes(\"each map's minimum\")")
    page.wait_for_function("old => document.querySelector('#attention-layer3 img').src !== old", arg=shown)
    stretched = fetch_pixels(page.locator("#attention-layer3 img").get_attribute("src"))
    assert np.abs(absolute - stretched).mean() > 1, "stretching a map that does not span 0-1 must change it"
    page.locator("#stretch input").uncheck()
    effects_checks(page)


def effects_checks(page) -> None:
    """"What does attention do here?": nothing runs until asked; then the stage × gate table, and the knocked-out
    heatmap of the stage and gate chosen."""
    page.locator("#effects").get_by_text("What does attention do here?").click()
    assert not page.locator("#effects-heatmap").is_visible() and page.locator("#effects-table table").count() == 0
    page.locator("#effects-run").click()
    page.wait_for_selector("#effects-table table")
    rows = page.locator("#effects-table tbody tr").all_inner_texts()
    assert len(rows) == 12 and rows[0].split("\t")[:2] == ["layer1", "spatial"], rows
    page.wait_for_function("document.querySelector('#effects-heatmap').innerText.includes(\"layer4's gates\")")
    page.locator("#effects-stage").get_by_role("radio", name="layer2").click()
    page.wait_for_function("document.querySelector('#effects-heatmap').innerText.includes(\"layer2's gates\")")
    assert fetch_pixels(page.locator("#effects-heatmap img").get_attribute("src")).std() > 10


def figure_checks(page, tmp_path: Path) -> None:
    """The paper figure: an unfamiliar photo's row is framed in the warning colour, a familiar one's is not."""
    page.get_by_role("tab", name="Figure").click()
    assert page.locator("#figure-opacity input[type=number]").input_value() == "0.5"
    marks = {}
    for name, picture in (("familiar", EXAMPLE), ("unfamiliar", tmp_path / "grey.png")):
        if name == "unfamiliar":
            GREY.save(picture)
            upload(page, picture)
            page.locator("#familiarity-banner").wait_for(state="visible")
            banner = page.locator("#familiarity-banner").inner_text()
            assert "unfamiliar to ResNet50 and CBAM-ResNet50" in banner and "not meaningful" in banner
            assert "unfamiliar" in page.locator("#familiarity-cbam .gauge-unfamiliar").inner_text()
        old = page.locator("#figure-preview img").get_attribute("src") if name == "unfamiliar" else None
        page.locator("#export-figure").click()
        page.wait_for_function(
            "old => { const img = document.querySelector('#figure-preview img'); return img && img.src !== old; }",
            arg=old,
        )
        page.wait_for_function("document.querySelector('#figure-files').innerText.includes('.pdf')")
        figure = fetch_pixels(page.locator("#figure-preview img").get_attribute("src"))
        assert figure.shape[1] > 500 and figure.std() > 10
        marks[name] = int((np.abs(figure - WARNING_RGB).max(axis=2) < 12).sum())
    assert marks["familiar"] < 50 < 1000 < marks["unfamiliar"], marks
    upload(page, EXAMPLE)
    page.locator("#familiarity-banner").wait_for(state="hidden")


def phone_layout_checks(page) -> None:
    """A 390 px phone: the answers right under the image, every top-5 percentage whole, nothing wider than the
    screen, every tab reachable."""
    image_box = page.locator("#input-image").bounding_box()
    first_heatmap = page.locator("#heatmap-baseline").bounding_box()
    assert first_heatmap["y"] < image_box["y"] + image_box["height"] + 80, (image_box, first_heatmap)
    assert first_heatmap["width"] >= 170, first_heatmap
    for key in ("baseline", "cbam"):
        cut = page.evaluate(
            """key => [...document.querySelectorAll('#top5-' + key + ' dd.confidence')].filter(d => {
                 const r = d.getBoundingClientRect(), box = d.closest('.confidence-set').getBoundingClientRect();
                 return d.scrollWidth > d.clientWidth + 1 || r.right > box.right + 1 || !/^\\d+%$/.test(d.innerText);
               }).map(d => d.innerText)""",
            key,
        )
        assert cut == [], f"{key}: top-5 percentages cut at 390 px: {cut}"
    for tab in ("Attention", "Localization", "Figure", "Models"):
        assert page.get_by_role("tab", name=tab).is_visible(), f"the {tab} tab is hidden on a phone"
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than a 390px phone screen"


def full_page_screenshot(page, path: Path) -> None:
    """The whole page as a PNG, once the pictures below the fold (loaded lazily) have loaded."""
    height = page.evaluate("document.documentElement.scrollHeight")
    for y in range(0, height, 400):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(100)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=True)
