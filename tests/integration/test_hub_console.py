"""The hub's web console in a real browser (Debian's Chromium through Playwright) against a real hub:
log in, see the workspace's agents live, the rollout of a revision and the audit log."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.kit import (
    ADMIN,
    ADMIN_PASSWORD,
    WORKSPACE,
    HubProcess,
    api,
    login,
    new_agent,
    running_hub,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Chromium is not installed (scripts/test installs it when root)"
    ),
]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with running_hub(tmp_path) as process:
        yield process


def test_the_console_shows_agents_rollout_and_audit(hub: HubProcess) -> None:
    from playwright.sync_api import expect, sync_playwright

    admin = login(hub.base)
    # A real agent session, kept open by its own event loop in a thread while the browser looks.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    agent = asyncio.run_coroutine_threadsafe(new_agent(hub, admin, "laptop-7"), loop).result(20)
    asyncio.run_coroutine_threadsafe(agent.connect(), loop).result(20)
    errors: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(hub.base + "/")
                page.fill("#username", ADMIN)
                page.fill("#password", "wrong-password")
                page.click("button[type=submit]")
                expect(page.locator("#login-error")).to_have_text("wrong username or password")
                page.fill("#password", ADMIN_PASSWORD)
                page.click("button[type=submit]")
                expect(page.locator("#agents")).to_contain_text("laptop-7", timeout=10_000)
                expect(page.locator("#agents .online")).to_have_text("online")
                code, applied = api(
                    hub.base,
                    "POST",
                    f"/hub/v1/workspaces/{WORKSPACE}/revisions",
                    {"document": {"services": {"api": {"port": 1}}}},
                    admin,
                )
                assert code == 201
                expect(page.locator("#revisions .applied")).to_have_text("laptop-7: applied", timeout=10_000)
                expect(page.locator("#revisions")).to_contain_text(applied["revision"][:12] + " (current)")
                expect(page.locator("#audit")).to_contain_text("revision.apply")
                asyncio.run_coroutine_threadsafe(agent.close(), loop).result(20)
                expect(page.locator("#agents .offline")).to_have_text("offline", timeout=10_000)
            finally:
                browser.close()
    finally:
        asyncio.run_coroutine_threadsafe(agent.close(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert errors == []
