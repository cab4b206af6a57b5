"""Refresh the README's screenshots: the real app on the bundled weights with one bundled scene, desktop and phone.

    .venv/bin/python docs/take_screenshots.py [--image examples/penguin.jpg] [--out docs/screenshots]

Needs Debian chromium and playwright (requirements-test.txt), like the browser test, which shares its helpers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.apphelpers import app_process  # noqa: E402
from tests.test_browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    full_page_screenshot,
    open_with_image,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "penguin.jpg")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with app_process() as app, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for name, options in (("desktop", DESKTOP), ("phone", PHONE)):
                page = open_with_image(browser, app.url, args.image, options)
                # The attention tab is not the open one: its pictures are in the page but not shown.
                page.wait_for_selector("#channel-attention img", state="attached")
                for stage in ("layer1", "layer2", "layer3", "layer4"):
                    page.wait_for_selector(f"#attention-{stage} img[src]", state="attached")
                full_page_screenshot(page, args.out / f"{name}.png")
                print(f"wrote {args.out / f'{name}.png'}")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
