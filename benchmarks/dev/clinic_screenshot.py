"""docs/clinic-app.md's picture of the clinic app: `edgederm serve` with a bundle, one
case from a release's test split entered through the page in headless Chromium
(Debian's, driven by Playwright) at phone width, the page saved as a PNG.

    python benchmarks/dev/clinic_screenshot.py --bundle quickstart/exports/tiny-openvino-int8 \
        --data quickstart/synth --out docs/clinic-app.png
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from edgederm.data.release import read_release
from edgederm.serve.process import ServerProcess

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--case", type=int, default=0, help="Index of the test-split case to enter.")
    parser.add_argument("--out", type=Path, default=Path("docs/clinic-app.png"))
    args = parser.parse_args()
    case = read_release(args.data).split("test")[args.case]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(args.bundle, Path(tmp)) as server, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
        page.goto(server.url)
        page.fill("#visit", "V-0001")
        page.set_input_files("#clinical", str(case.clinical))
        page.set_input_files("#derm", str(case.derm))
        page.locator("#submit").click()
        expect(page.locator("#result")).to_be_visible(timeout=30_000)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
