"""The example shop in a real browser (Debian's Chromium, driven by Playwright): the page at
http://web.localhost:<port> calls the api and the events service through devmesh's proxy, cross-origin,
as a developer's browser does. Chromium resolves *.localhost to loopback by itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support import Project, free_port, running_agent

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (scripts/test installs it when root)"
)


def test_the_page_lists_products_places_an_order_and_shows_live_events(project: Project) -> None:
    from playwright.sync_api import sync_playwright

    shutil.copytree(SHOP, project.root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".devmesh"))
    listen = free_port()
    project.write(
        f'[proxy]\nadmin = "127.0.0.1:0"\nlisten = "127.0.0.1:{listen}"\n', name="devmesh.local.toml"
    )
    with running_agent(project, env={"EVENTS_INTERVAL_S": "0.2"}) as agent:
        agent.wait_healthy(timeout=30)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                ],
            )
            try:
                page = browser.new_page()
                page.goto(f"http://web.localhost:{listen}/", timeout=20_000)
                buy = page.get_by_role("button", name="Buy").first
                buy.wait_for(timeout=15_000)  # the products came from the api, through the proxy
                assert "Mesh T-shirt" in page.inner_text("#products")
                buy.click()
                page.wait_for_function(
                    "document.getElementById('status').textContent.includes('paid')", timeout=15_000
                )  # the api charged through payments, both behind the proxy
                page.wait_for_function(
                    "document.getElementById('orders').textContent.includes('ch_')", timeout=15_000
                )  # and the page read the orders back
                page.wait_for_function(
                    "document.querySelectorAll('#events li').length >= 2", timeout=15_000
                )  # server-sent events arrive one by one through the proxy
            finally:
                browser.close()
