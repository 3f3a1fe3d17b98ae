"""The app in a real browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import app
from pipelines.examples import example_photos

CHROMIUM = "/usr/bin/chromium"
# Flags for a sandboxed, offline machine: no background fetches that would only fail.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "build" / "screenshots"

pytestmark = pytest.mark.slow


def _require_chromium():
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install chromium (CI does this in .ci/run)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); CI requires this test")


@pytest.fixture(scope="module")
def page():
    _require_chromium()
    from playwright.sync_api import sync_playwright

    app.demo.queue(default_concurrency_limit=2)
    app.demo.launch(prevent_thread_lock=True, show_error=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(app.demo.local_url, wait_until="networkidle")
            yield page
            browser.close()
    finally:
        app.demo.close()


def _upload(page, path):
    page.locator("input[type=file]").first.set_input_files(str(path))


def test_upload_a_photo_and_read_the_label(page):
    coffee = next(path for path in example_photos() if path.name == "coffee.png")
    _upload(page, coffee)
    page.get_by_role("button", name="Classify", exact=True).click()
    heading = page.get_by_test_id("label-output-value")
    heading.wait_for(timeout=60_000)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=label-output-value]')?.textContent.includes('espresso')",
        timeout=60_000,
    )
    assert "espresso" in heading.text_content()
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "classify.png"), full_page=True)


def test_upload_a_non_image_and_see_the_error(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are meeting notes, not a picture")
    page.reload(wait_until="networkidle")
    _upload(page, notes)
    page.get_by_role("button", name="Classify", exact=True).click()
    error = page.get_by_text("not a recognised image format")
    error.first.wait_for(timeout=60_000)
    assert "notes.png" in page.content()
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "error.png"), full_page=True)
    shutil.rmtree(tmp_path, ignore_errors=True)
