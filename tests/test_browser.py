"""The demo's reports in a real browser: Debian chromium driven through the DevTools protocol.

Playwright (the PyPI package) drives the system chromium (``executable_path``); it never
downloads a browser of its own. Each report is loaded from a ``file://`` URL and must make no
request other than its own page and ``data:`` URIs, fail none, log no console message of type
error or warning, raise no page error, and show every image. A full-page screenshot is taken and
checked for content; ``privaudit report --pdf`` must produce a multi-page PDF.

Set ``PRIVAUDIT_SCREENSHOTS=DIR`` to keep the screenshots and PDFs (to look at them).
Without chromium the tests skip locally, and fail under CI (``CI`` set), where ``make test``
installs it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from privaudit.cli import main
from privaudit.reports.pdf import CANDIDATES, browser_flags

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: .ci/run and make test install it (apt-get install chromium)")
    pytest.skip("chromium is not installed (make test installs it where apt-get is available)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo run once, plus a reviewed and a shareable rendering of its leaky audit."""
    root = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(root)]) == 0
    leaky = root / "leaky" / "results.json"
    assert main(["waivers", "init", str(leaky)]) == 0
    text = (root / "leaky" / "waivers.toml").read_text()
    # Decide the first two items: one false alarm, one accepted copy.
    entries = text.split("\n[[waiver]]\n")
    entries[1] = entries[1].replace('decision = "pending"', 'decision = "not_a_copy"').replace('reviewer = ""', 'reviewer = "Dr A. Example"').replace('date = ""', "date = 2025-11-24").replace('reason = ""', 'reason = "Different rib cage; similar pose only."')
    entries[2] = entries[2].replace('decision = "pending"', 'decision = "accepted"').replace('reviewer = ""', 'reviewer = "B. Board"').replace('date = ""', "date = 2025-11-24").replace('reason = ""', 'reason = "Release accepted by the ethics board, ref. 2025-17."')
    (root / "review.toml").write_text("\n[[waiver]]\n".join(entries))
    assert main(["gate", str(leaky), "--waivers", str(root / "review.toml"), "--out", str(root / "reviewed.json")]) == 1
    assert main(["report", str(root / "reviewed.json"), "--out", str(root / "reviewed.html")]) == 0
    assert main(["report", str(leaky), "--no-images", "--out", str(root / "shareable.html")]) == 0
    return root


PAGES = {
    "leaky": "leaky/report.html",
    "clean": "clean/report.html",
    "reviewed": "reviewed.html",
    "shareable": "shareable.html",
}


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright's own flags plus ours: offline, no first-run or background traffic.
        args = [f for f in browser_flags("/nonexistent") if not f.startswith(("--headless", "--user-data-dir"))]
        b = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        yield b
        b.close()


def _keep(path: Path) -> None:
    keep = os.environ.get("PRIVAUDIT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def _visit(browser, url: str):
    """Open ``url``; return the page, its context and what it requested, failed and logged."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    page = context.new_page()
    seen = {"requests": [], "failed": [], "console": [], "errors": []}
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("requestfailed", lambda r: seen["failed"].append(f"{r.url} {r.failure}"))
    page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok
    page.wait_for_load_state("networkidle")
    seen["external"] = [u for u in seen["requests"] if u != url and not u.startswith("data:")]
    seen["broken_images"] = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)")
    seen["images_without_alt"] = page.evaluate("Array.from(document.images).filter(i => !i.alt.trim()).length")
    seen["scripts"] = page.evaluate("document.scripts.length")
    seen["bad_console"] = [c for c in seen["console"] if c.startswith(("error", "warning"))]
    return page, context, seen


def test_the_checks_catch_a_page_that_misbehaves(browser, tmp_path):
    # Negative control: the same observations on a page with an external image, a broken one,
    # a script error and a console error must all report something.
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><h1>x</h1><img src="http://example.invalid/a.png" alt="a">'
        '<img src="data:image/png;base64,AAAA"><script>console.error("boom"); undefined_fn();</script></body></html>'
    )
    page, context, seen = _visit(browser, bad.resolve().as_uri())
    context.close()
    assert seen["external"] == ["http://example.invalid/a.png"]
    assert seen["failed"] and seen["errors"] and seen["bad_console"] and seen["scripts"] == 1
    assert len(seen["broken_images"]) == 2 and seen["images_without_alt"] == 1


@pytest.mark.parametrize("name", list(PAGES))
def test_report_loads_cleanly_in_chromium(name, demo, browser, tmp_path):
    page_path = demo / PAGES[name]
    page, context, seen = _visit(browser, page_path.resolve().as_uri())
    assert seen["external"] == [] and seen["failed"] == [] and seen["errors"] == [], seen
    assert seen["bad_console"] == [] and seen["broken_images"] == [] and seen["images_without_alt"] == 0
    assert seen["scripts"] == 0
    headline = page.inner_text("#verdict + .verdict .badge.big")
    assert headline.strip().lower().endswith(("pass", "fail", "warn"))

    n_pngs = page.evaluate("Array.from(document.images).filter(i => i.src.startsWith('data:image/png')).length")
    n_charts = page.evaluate("Array.from(document.images).filter(i => i.src.startsWith('data:image/svg+xml')).length")
    assert n_charts >= 1  # the similarity histogram
    if name in ("leaky", "reviewed"):
        assert n_pngs > 0 and "This report contains patient images" in page.inner_text("header")
    if name == "shareable":
        assert n_pngs == 0 and "Shareable version" in page.inner_text("header")
    if name == "reviewed":
        text = page.inner_text("section[aria-labelledby=review]")
        assert "Dr A. Example" in text and "B. Board" in text
        assert "2 reviewer waivers" in page.inner_text(".verdict")

    shot = tmp_path / f"report-{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    context.close()
    from PIL import Image

    with Image.open(shot) as img:
        width, height = img.size
        grey = np.asarray(img.convert("L"))
    assert width == 1200 and height > 1500  # the whole page, not the viewport
    assert len(np.unique(grey)) > 40  # text, charts, thumbnails: not a blank page
    _keep(shot)


def test_report_prints_to_pdf(demo, tmp_path, capsys):
    _chromium()
    out = tmp_path / "report.html"
    assert main(["report", str(demo / "leaky" / "results.json"), "--out", str(out), "--pdf"]) == 0
    pdf = out.with_suffix(".pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", data))
    assert pages >= 2, pages
    assert f"pdf:     {pdf}" in capsys.readouterr().out
    _keep(pdf)


def test_dp_sweep_report_loads_cleanly_in_chromium(browser, tmp_path):
    """The DP sweep's report: same rules as the audit report (offline, no scripts, every chart
    with alt text), and it shows the ε table and the trade-off charts."""
    pytest.importorskip("opacus")
    import math

    from privaudit.config import AuditConfig
    from privaudit.dp import SweepConfig, TrainOptions, dp_sweep
    from privaudit.phantoms import make_study

    study = make_study(seed=0, n_train_patients=10, n_holdout_patients=20, n_synthetic=10, size=32)
    cfg = SweepConfig(epsilons=(3.0, math.inf), train=TrainOptions(epochs=2, batch_size=16), canaries=8, n_synthetic=40,
                      audit=AuditConfig(embedders=("pixels",), checks=("copies", "quality")))
    result = dp_sweep(study.train, study.holdout, config=cfg, out=tmp_path / "sweep")
    page, context, seen = _visit(browser, (result.out / "dp_report.html").resolve().as_uri())
    assert seen["external"] == [] and seen["failed"] == [] and seen["errors"] == [], seen
    assert seen["bad_console"] == [] and seen["broken_images"] == [] and seen["images_without_alt"] == 0 and seen["scripts"] == 0
    n_charts = page.evaluate("Array.from(document.images).filter(i => i.src.startsWith('data:image/svg+xml')).length")
    assert n_charts >= 3  # accountant vs empirical ε, and one per assessed metric
    text = page.inner_text("#points + table")
    assert "inf (no DP)" in text and "3" in text
    shot = tmp_path / "dp-report.png"
    page.screenshot(path=str(shot), full_page=True)
    context.close()
    _keep(shot)
