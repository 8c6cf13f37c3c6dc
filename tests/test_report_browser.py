"""The rendered report in real headless Chromium: Debian's `chromium`, driven by Playwright through
`executable_path` (Playwright never downloads a browser here). No console errors, no network
requests, every section present, every chart drawn (its screenshot is not blank), and the table of
experiments sorts when a header is clicked and filters when text is typed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.test_report import study_records, write_run
from lora_bench.report import render_report

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SECTIONS = ("methods", "rank", "targets", "quantization", "size", "pareto", "runs", "performance", "all-experiments")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"needs chromium: {CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs chromium driven by playwright: the playwright Python package is not installed")
    root = tmp_path_factory.mktemp("reports")
    index = render_report([write_run(root, "study", study_records())], root / "report")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.errors, page.requests = [], []
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.on("request", lambda r: page.requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        yield page
        browser.close()


def variance(png: bytes) -> float:
    from PIL import Image, ImageStat

    return sum(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).var)


def test_page_loads_offline_without_errors(page):
    assert page.errors == []
    assert page.requests == []  # self-contained: nothing fetched


def test_every_section_is_present_with_its_finding(page):
    for sid in SECTIONS:
        section = page.locator(f"section#{sid}")
        assert section.count() == 1, sid
        assert section.locator("h2").inner_text().strip()
    findings = page.locator("section.q p.finding").all_inner_texts()
    assert len(findings) == 8 and all(len(f) > 30 and f.endswith(".") for f in findings)


def test_charts_are_drawn(page):
    pytest.importorskip("PIL", reason="needs chromium screenshot checks: Pillow is not installed")
    charts = page.locator("svg.chart")
    assert charts.count() >= 9
    for i in range(charts.count()):
        chart = charts.nth(i)
        chart.scroll_into_view_if_needed()
        box = chart.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 60
        assert variance(chart.screenshot()) > 50, f"chart {i} looks blank"
        assert chart.locator("circle, rect.hcell, path.line, rect").count() > 2
    assert variance(page.screenshot(full_page=True)) > 50


def column(page, header: str) -> list[str]:
    index = page.locator("#experiments thead th").all_inner_texts().index(header)
    return page.locator(f"#experiments tbody tr:visible td:nth-child({index + 1})").all_inner_texts()


def test_experiments_table_sorts_and_filters(page):
    page.locator("#experiments-wrap").scroll_into_view_if_needed()
    before = column(page, "accuracy")
    page.locator("#experiments thead th", has_text="accuracy").first.click()
    ascending = column(page, "accuracy")
    numbers = [float(v) for v in ascending if v != "–"]
    assert numbers == sorted(numbers) and ascending != before
    page.locator("#experiments thead th", has_text="accuracy").first.click()
    descending = [float(v) for v in column(page, "accuracy") if v != "–"]
    assert descending == sorted(numbers, reverse=True)
    page.fill("#filter", "qlora")
    methods = column(page, "method")
    assert methods and set(methods) == {"qlora-nf4"}
    assert "shown" in page.locator("#shown").inner_text()
    page.fill("#filter", "")
    page.select_option("#status-filter", "failed")
    assert column(page, "status") == ["failed"]
    page.select_option("#status-filter", "")
