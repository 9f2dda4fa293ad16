"""The web console in a real headless browser (Debian's chromium, driven by Playwright) against a real server:
sign in with the bootstrap key, create an identity, enrol two photos, identify a third and see the right name.

Set FACEDB_SCREENSHOTS=docs to refresh the README's screenshots from this run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.conftest import DATA_ROOT, REPO, admin_headers, require_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser_page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is a dev dependency")
    if CHROMIUM is None:
        message = "no chromium on PATH (Debian: apt-get install chromium)"
        if os.environ.get("FACEDB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test is required here (FACEDB_REQUIRE_BROWSER=1) but there is {message}")
        pytest.skip(message)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            yield page
        finally:
            browser.close()


def _shot(page: Any, name: str, tmp_path: Path) -> None:
    folder = os.environ.get("FACEDB_SCREENSHOTS")
    target = (REPO / folder if folder else tmp_path) / f"console-{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)


def test_sign_in_enrol_and_identify_in_the_browser(
    browser_page: Any, server_url: str, settings: Settings, tmp_path: Path
) -> None:
    photos = require_data(DATA_ROOT / "lfw" / "images" / "Colin_Powell")
    enrol = [str(photos / f"Colin_Powell_000{i}.jpg") for i in (1, 2)]
    probe = str(photos / "Colin_Powell_0003.jpg")
    page = browser_page
    key = settings.resolved_admin_key_file.read_text().strip()

    page.goto(f"{server_url}/console")
    page.fill("#key", "fdb_000000000000_" + "x" * 43)
    page.click("#signin-form button")
    page.wait_for_selector("#flash.error")
    assert "invalid_api_key" in page.text_content("#flash")

    page.fill("#key", key)
    page.click("#signin-form button")
    page.wait_for_selector("#nav:not([hidden])")
    assert page.text_content("#key-name").startswith("admin")

    page.click("#new-identity-box summary")
    page.fill("#new-identity [name=external_id]", "emp-0001")
    page.fill("#new-identity [name=display_name]", "Colin Powell")
    page.click("#new-identity button")
    page.wait_for_selector("#view-identity:not([hidden])")

    page.set_input_files("#enrol-files", enrol)
    # selectors, not wait_for_function: the console's CSP (kept on here) forbids evaluating strings
    page.wait_for_selector("#enrol-results .card.accepted:nth-child(2)")
    page.wait_for_selector("#faces li:nth-child(2)")
    assert page.locator("#enrol-results .card.rejected").count() == 0
    _shot(page, "enrol", tmp_path)

    page.click("#nav a[data-view=search]")
    page.set_input_files("#identify-file", probe)
    page.wait_for_selector("#identify-result .card")
    result = page.text_content("#identify-result")
    assert "match: Colin Powell" in result, result
    _shot(page, "identify", tmp_path)

    page.click("#nav a[data-view=audit]")
    page.wait_for_selector("#audit-table tbody tr")
    actions = page.eval_on_selector_all(
        "#audit-table tbody tr td:nth-child(3)", "cells => cells.map(c => c.textContent)"
    )
    assert actions[:3] == ["identify", "enroll_faces", "create_identity"]
    _shot(page, "audit", tmp_path)

    # the key lives in the tab's session storage, never in a cookie
    assert page.context.cookies() == []
    with httpx.Client(base_url=server_url, headers=admin_headers(settings)) as c:
        assert c.get("/v1/galleries/default").json()["face_count"] == 2
