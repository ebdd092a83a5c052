"""The bench report's HTML page in a real browser: Debian's headless Chromium
driven by Playwright (its own browser download is not reachable offline, so it
launches /usr/bin/chromium). The page must show the verdict table with the
gate's intervals and flip rates, coloured verdicts, fit a phone's width, and
load nothing from the network. A screenshot is saved in the test's folder.

.ci/run installs Chromium and sets EDGEDERM_REQUIRE_BROWSER=1, so in CI a
missing browser fails the test instead of skipping it."""
from edgederm.benchmarks.bench import run_bench
from edgederm.benchmarks.report import write_reports
from edgederm.scoring.gate import GateSettings
from tests.helpers import CHROMIUM_ARGS, chromium_or_skip


def test_report_page_shows_verdicts_intervals_and_flips_on_a_phone(bundles, synthetic_release, tmp_path):
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright
    report = run_bench([str(bundles["openvino-int8"]), f"{bundles['jetson-int8']}@onnxruntime"],
                       reference=str(bundles["onnx-fp32"]), data=synthetic_release, split="test", batch_sizes=[1],
                       warmup=0, runs=3, gate=GateSettings(resamples=300))
    page_path = write_reports(report, tmp_path / "report")["html"]
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)  # a phone
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.as_uri())
        table = page.locator("#verdicts")
        assert table.is_visible()
        rows = table.locator("tbody tr")
        assert rows.count() == 3
        text = table.inner_text()
        for row in report["variants"]:
            assert row["name"] in text
        ov = next(r for r in report["variants"] if r["name"] == bundles["openvino-int8"].name)
        ci = ov["gate"]["auc"]["ci_points"]
        assert f"[{ci[0]:.2f}, {ci[1]:.2f}]" in text                       # the interval is shown
        assert f"{ov['gate']['flips']['diagnosis']['rate_percent']:.1f} %" in text
        reference_badge = page.locator("#verdicts .verdict.reference")
        assert reference_badge.inner_text() == "reference"
        colour = reference_badge.evaluate("e => getComputedStyle(e).backgroundColor")
        assert colour == "rgb(221, 230, 245)"                              # styled, not raw text
        # nothing wider than the phone except inside the scrolling table wrappers
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.locator("img").count() >= 1                             # plots embedded
        page.screenshot(path=str(tmp_path / "report-phone.png"), full_page=True)
        browser.close()
    assert (tmp_path / "report-phone.png").stat().st_size > 10_000
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
