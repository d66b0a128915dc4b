"""The page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Playwright cannot download a browser of its own here, so the test uses the system's ``chromium``
(``apt-get install chromium``; ``.ci/run`` installs it) through ``executable_path``, and skips with a
reason when it or the playwright package is missing. The server runs with uvicorn on a free 127.0.0.1
port in a background thread for the length of the test.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import tree_snapshot

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without these Chromium keeps trying to reach update, sync and component hosts this network refuses.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]

try:
    import playwright.sync_api  # noqa: F401

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - the test extra installs it
    HAVE_PLAYWRIGHT = False

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium on PATH: install Debian's package (apt-get install chromium); .ci/run does",
    ),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason='playwright is not installed: pip install -e ".[test]"'),
]


@pytest.fixture
def live_server(built_index_dir: Path, tmp_path: Path) -> Iterator[str]:
    """The app on a free 127.0.0.1 port (uvicorn in a background thread); the index stays unchanged."""
    from lookalike.server import create_app
    from lookalike.server.background import serve_in_background

    before = tree_snapshot(built_index_dir)
    with serve_in_background(create_app(built_index_dir, cache_dir=tmp_path / "thumbs")) as url:
        yield url
    assert tree_snapshot(built_index_dir) == before


def test_search_by_picture_in_chromium(live_server: str, class_folder: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console: {msg.text}")
                    if msg.type == "error" and "Failed to load resource" not in msg.text  # the 415 below
                    else None
                ),
            )
            page.on(
                "request",
                lambda req: (
                    problems.append(f"request to another host: {req.url}")
                    if not req.url.startswith(live_server) and not req.url.startswith(("blob:", "data:"))
                    else None
                ),
            )
            page.goto(live_server + "/")
            expect(page.locator("#status")).to_contain_text("24 images")

            # upload a picture: the query appears beside a grid of its most similar images, with scores
            page.set_input_files("#file", str(class_folder / "warm" / "warm_03.png"))
            expect(page.locator("#hits li")).to_have_count(12)
            expect(page.locator("#query-caption")).to_contain_text("warm_03.png")
            expect(page.locator("#hits .label").first).to_have_text("warm")
            expect(page.locator("#hits .score").first).to_have_text(re.compile(r"^(1\.000|0\.99\d)$"))
            page.wait_for_function(
                "() => [...document.querySelectorAll('#hits img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(tmp_path / "upload-results.png"))

            # click a result: it becomes the query (left out of its own results)
            second = page.locator("#hits .hit").nth(1)
            target = second.get_attribute("data-id")
            second.click()
            expect(page.locator("#query-caption")).to_contain_text(f"#{target}")
            expect(page).to_have_url(re.compile(rf"#id={target}$"))
            expect(page.locator("#hits li")).to_have_count(12)
            ids = page.locator("#hits .hit").evaluate_all("els => els.map(e => e.dataset.id)")
            assert target not in ids

            # change k and the metric: the search runs again
            page.fill("#k", "5")
            page.locator("#k").dispatch_event("change")
            expect(page.locator("#hits li")).to_have_count(5)
            page.select_option("#metric", "euclidean")
            expect(page.locator("#summary")).to_contain_text("euclidean distance")
            page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)

            # a bad upload: one clear message
            bad = tmp_path / "notes.txt"
            bad.write_text("not a picture")
            page.set_input_files("#file", str(bad))
            expect(page.locator("#message")).to_contain_text("not an image")

            # browse the collection and search from it; the info panel
            page.click("#tab-browse")
            expect(page.locator("#collection li")).to_have_count(24)
            expect(page.locator("#page-label")).to_contain_text("page 1 of 1")
            page.locator("#collection .hit").nth(3).click()
            expect(page.locator("#query-caption")).to_contain_text("#3")
            page.click("#tab-info")
            expect(page.locator("#info-list")).to_contain_text("Extractor")
            expect(page.locator("#info-list")).to_contain_text("24")

            # phone width: nothing wider than the screen
            page.set_viewport_size({"width": 390, "height": 844})
            page.click("#tab-search")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert (tmp_path / "serve-page.png").stat().st_size > 10_000
