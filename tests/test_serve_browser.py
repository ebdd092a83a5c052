"""The clinic app in a real browser: `edgederm serve` started as a process on a
free loopback port, its page driven in Debian's headless Chromium through
Playwright. A nurse's day: upload a synthetic pair, read the score, download
the CSV, get a clear message for a grayscale photo; then the server is killed
(SIGKILL, no clean shutdown), started again, and the case is still there.
Screenshots are saved in the test's folder (phone width).

.ci/run installs Chromium and sets EDGEDERM_REQUIRE_BROWSER=1, so in CI a
missing browser fails the test instead of skipping it."""
import csv
import json
import urllib.request

import cv2
import numpy as np

from edgederm.data.release import read_release
from edgederm.runtime.diagnose import RESULT_COLUMNS
from edgederm.serve.process import ServerProcess
from tests.helpers import CHROMIUM_ARGS, chromium_or_skip


def test_a_clinic_day_in_the_browser(bundles, synthetic_release, tmp_path):
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright
    case = read_release(synthetic_release).split("test")[0]
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((300, 400), 120, np.uint8))
    server = ServerProcess(bundles["onnx-fp32"], tmp_path / "clinic").start()
    url = server.url
    requests = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                          accept_downloads=True)
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            expect(page.locator("#bundle")).to_contain_text(bundles["onnx-fp32"].name)
            expect(page.locator("#disclaimer")).to_contain_text("decision support")
            # keyboard only: the form's controls are reachable with Tab, in order
            page.locator("#visit").focus()
            page.keyboard.type("V-2026-001")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "clinical"
            page.set_input_files("#clinical", str(case.clinical))
            page.set_input_files("#derm", str(case.derm))
            page.locator("#submit").focus()
            page.keyboard.press("Enter")
            expect(page.locator("#result")).to_be_visible(timeout=30_000)
            stored = json_get(f"{url}api/cases")["cases"]
            assert len(stored) == 1 and stored[0]["visit_id"] == "V-2026-001"
            score = stored[0]["prediction"]["seven_point"]["score"]
            expect(page.locator("#score")).to_contain_text(f"Seven-point checklist score {score} ")
            expect(page.locator("#criteria tbody tr")).to_have_count(7)
            expect(page.locator("#cases tbody tr")).to_have_count(1)
            expect(page.locator("#cases tbody tr")).to_contain_text("V-2026-001")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390      # fits a phone
            page.screenshot(path=str(tmp_path / "clinic-result.png"), full_page=True)

            with page.expect_download() as download:
                page.locator("#csv").click()
            saved = tmp_path / "cases.csv"
            download.value.save_as(saved)
            with open(saved, newline="") as f:
                rows = list(csv.DictReader(f))
            assert list(rows[0]) == RESULT_COLUMNS and rows[0]["id"] == "V-2026-001"
            assert rows[0]["seven_point_score"] == str(score)

            page.set_input_files("#clinical", str(grey))
            page.set_input_files("#derm", str(case.derm))
            page.locator("#submit").click()
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error")).to_contain_text("grayscale")
            expect(page.locator("#cases tbody tr")).to_have_count(1)                  # nothing stored
            page.screenshot(path=str(tmp_path / "clinic-refused.png"), full_page=True)

            server.kill()                               # SIGKILL: no clean shutdown
            server.start()                              # same port, same data folder
            page.reload()
            expect(page.locator("#cases tbody tr")).to_have_count(1)
            expect(page.locator("#cases tbody tr")).to_contain_text("V-2026-001")
            page.locator("#cases tbody button").focus()          # keyboard: the row's Show button, Enter
            page.keyboard.press("Enter")
            expect(page.locator("#result")).to_be_focused()
            expect(page.locator("#score")).to_contain_text(f"score {score} ")
            browser.close()
    finally:
        server.stop()
    assert (tmp_path / "clinic-result.png").stat().st_size > 10_000
    assert all(u.startswith((url, "blob:")) for u in requests), [u for u in requests if not u.startswith(url)]


def json_get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())

