"""The dashboard at the admin address, in a real browser (Debian's Chromium, driven by Playwright), against
a real agent running the example shop. The page gets its state only from the events stream; these tests
check that what happens to the mesh (faults and chaos scenarios included) reaches the DOM within a second,
and that its buttons and forms act.

The tests of a worker share one agent and one page (module scope), and each stands alone: it leaves the
shop as it found it, so any order and any split across xdist workers works.
Set DEVMESH_DASHBOARD_SCREENSHOTS=docs/images to also write the screenshots the docs use.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from support import AgentProcess, Project, devmesh, free_port, http, running_agent, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = os.environ.get("DEVMESH_DASHBOARD_SCREENSHOTS")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (scripts/test installs it when root)"
)


def shop(project: Project, admin: str = "127.0.0.1:0") -> int:
    """The example shop in the project's folder, its proxy on a free port (returned)."""
    shutil.copytree(SHOP, project.root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".devmesh"))
    listen = free_port()
    project.write(f'[proxy]\nadmin = "{admin}"\nlisten = "127.0.0.1:{listen}"\n', name="devmesh.local.toml")
    return listen


def console_problems(page: Page) -> list[str]:
    """The errors and warnings the page's console shows from now on (filled as they come)."""
    problems: list[str] = []

    def note(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"{message.type}: {message.text}")

    page.on("console", note)
    return problems


def open_dashboard(browser: Browser, agent: AgentProcess) -> tuple[Page, list[str]]:
    """The dashboard as `devmesh dashboard` opens it: the admin address, the token in the fragment. With
    the errors and warnings of its console, from the start."""
    client = agent.client
    assert client.token, "the agent wrote no token"
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    console = console_problems(page)
    page.goto(f"http://{client.record.admin}/#token={client.token}", timeout=20_000)
    return page, console


@dataclass
class Dashboard:
    agent: AgentProcess
    browser: Browser
    page: Page
    admin: str  # host:port of the admin API, which serves the dashboard
    listen: int  # the proxy
    console: list[str] = field(default_factory=list)  # the page's errors and warnings, checked at the end

    def row(self, service: str) -> str:
        return f'#services tr[data-service="{service}"]'

    def field(self, service: str, name: str) -> str:
        return f'{self.row(service)} [data-field="{name}"]'

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector).strip()

    def shows(self, expression: str, timeout_ms: int = 10_000) -> None:
        """Wait (bounded) until a JS expression over the page is true."""
        self.page.wait_for_function(expression, timeout=timeout_ms)

    def state_is(self, service: str, state: str, timeout_ms: int = 10_000) -> None:
        cell = self.field(service, "state")
        self.shows(f"document.querySelector('{cell}')?.textContent === '{state}'", timeout_ms)

    def dashboard_state(self) -> dict[str, Any]:
        return dict(self.page.evaluate("({...window.devmeshDashboard})"))

    def expect_console(self, fragment: str, timeout_ms: int = 3_000) -> None:
        """A line the test caused on purpose (Chromium logs every refused fetch): not a problem of the page.
        Waits for it (Chromium reports it a little late), then forgets it."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not any(fragment in line for line in self.console) and time.monotonic() < deadline:
            self.page.wait_for_timeout(50)  # lets Playwright deliver the page's events
        assert any(fragment in line for line in self.console), f"no {fragment!r} in {self.console}"
        self.console[:] = [line for line in self.console if fragment not in line]

    def fault(self, name: str) -> str:
        return f'#faults tr[data-fault="{name}"]'

    def banner(self, scenario: str) -> str:
        return f'#scenarios [data-scenario="{scenario}"]'

    def live(self) -> None:
        """The page has its hello (a test may be the first of its worker, right after the page opened)."""
        self.shows("document.querySelector('#connection').dataset.state === 'live'")

    def get(self, service: str, target: str = "/") -> tuple[int, dict[str, str]]:
        """One request through the proxy: its status and headers."""
        status, headers, _ = http(self.listen, f"{service}.localhost:{self.listen}", target, timeout=10)
        return status, headers


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Dashboard]:
    project = Project((tmp_path_factory.mktemp("dashboard") / "project").resolve())
    project.root.mkdir()
    listen = shop(project)
    with running_agent(project) as agent:
        agent.wait_healthy(timeout=30)
        page, console = open_dashboard(browser, agent)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            yield Dashboard(agent, browser, page, agent.client.record.admin, listen, console)
        finally:
            page.close()
        assert not errors, f"the page threw: {errors}"
        assert not console, f"the page's console: {console}"


class Traffic:
    """Requests through the proxy from background threads: the shop's page, its api (an order goes on to
    payments) and a missing path (404), until stopped."""

    def __init__(self, listen: int) -> None:
        self.listen = listen
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [
            threading.Thread(target=self._loop, args=(plan,), daemon=True)
            for plan in (
                [
                    ("web", "GET", "/", b""),
                    ("api", "GET", "/api/products", b""),
                    ("api", "GET", "/nope", b""),
                ],
                [("api", "POST", "/api/orders", b'{"product_id": 2}')],
            )
        ]

    def _loop(self, plan: list[tuple[str, str, str, bytes]]) -> None:
        while not self.stop.is_set():
            for service, method, target, body in plan:
                headers = {"Content-Type": "application/json"} if body else None
                try:
                    http(
                        self.listen,
                        f"{service}.localhost:{self.listen}",
                        target,
                        headers,
                        method=method,
                        body=body,
                        timeout=5,
                    )
                    self.sent += 1
                except OSError:
                    pass
            self.stop.wait(0.02)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def save_screenshots(dashboard: Dashboard, folder: Path) -> None:
    """The pictures in the docs: the dashboard after ~40 s of traffic on the shop, with one fault slowing
    half the charges, and its topology."""
    page = dashboard.page
    client = dashboard.agent.client
    client.post(
        "/api/v1/faults",
        {
            "name": "slow-charges",
            "service": "payments",
            "delay": "200ms..600ms",
            "rate": 0.5,
            "methods": ["POST"],
            "paths": ["/charge"],
        },
    )
    try:
        _save_screenshots(page, folder)
    finally:
        client.delete("/api/v1/faults/slow-charges")
    page.wait_for_selector(dashboard.fault("slow-charges"), state="detached", timeout=5_000)


def _save_screenshots(page: Page, folder: Path) -> None:
    time.sleep(40)  # the charts fill up
    folder.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1440, "height": 1200})
    page.evaluate("window.scrollTo(0, 0)")
    box = page.locator('canvas[data-chart="rps"]').bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.78, box["y"] + box["height"] * 0.5)  # the chart's tooltip
    time.sleep(1.2)
    page.screenshot(path=str(folder / "dashboard.png"))
    page.locator(".panel-topology").screenshot(path=str(folder / "dashboard-topology.png"))
    page.mouse.move(0, 0)
    page.set_viewport_size({"width": 1440, "height": 900})


def test_the_dashboard_lists_the_shops_services_and_topology(dashboard: Dashboard) -> None:
    page = dashboard.page
    dashboard.shows("document.querySelector('#connection').dataset.state === 'live'")
    assert "#token" not in page.url  # the token moved to sessionStorage, out of the address bar
    assert dashboard.text("#mesh-name") == "shop"
    for name in ("payments", "api", "events", "web"):
        dashboard.state_is(name, "running")
        assert dashboard.text(dashboard.field(name, "health")) == "healthy"
        assert page.get_attribute(dashboard.field(name, "name"), "href") == (
            f"http://{name}.localhost:{dashboard.listen}"
        )
        assert dashboard.text(dashboard.field(name, "origin")) == "local"
    assert dashboard.text(dashboard.field("api", "version")) == "1.4.2"
    # The topology: a node per service, an arrow per depends_on (web -> api, web -> events, api -> payments).
    for name in ("payments", "api", "events", "web"):
        page.wait_for_selector(f'#topology svg g[data-service="{name}"]', timeout=5_000)
    edges = page.eval_on_selector_all(
        "#topology svg path.e-dep", "paths => paths.map(p => `${p.dataset.from}>${p.dataset.to}`).sort()"
    )
    assert edges == ["api>payments", "web>api", "web>events"]
    assert "h-healthy" in (page.get_attribute('#topology svg g[data-service="api"]', "class") or "")

    # Opened without the token, the same page is read-only and says how to act.
    context = dashboard.browser.new_context()
    try:
        reader = context.new_page()
        reader.goto(f"http://{dashboard.admin}/", timeout=20_000)
        reader.wait_for_selector(dashboard.row("api"), timeout=10_000)
        assert reader.is_visible("#readonly")
        restart = f'{dashboard.row("api")} button[data-action="restart"]'
        assert reader.is_disabled(restart)
        assert "devmesh dashboard" in (reader.get_attribute(restart, "title") or "")
    finally:
        context.close()


def test_a_crash_shows_within_a_second(dashboard: Dashboard) -> None:
    page = dashboard.page
    pid = dashboard.agent.service("events")["pid"]
    row = dashboard.row("events")
    dashboard.shows(f"document.querySelector('{row}')?.dataset.pid === '{pid}'")
    page.evaluate(
        """(selector) => {
            const cell = document.querySelector(selector);
            window.__eventsStates = [];
            new MutationObserver(() => window.__eventsStates.push(cell.textContent))
                .observe(cell, {childList: true, characterData: true, subtree: true});
        }""",
        dashboard.field("events", "state"),
    )

    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    cell = dashboard.field("events", "state")
    page.wait_for_function(f"document.querySelector('{cell}').textContent !== 'running'", timeout=1_000)
    seen_after = time.monotonic() - killed
    assert seen_after < 1.0, f"the crash reached the page after {seen_after:.2f}s"
    assert dashboard.text(cell) in ("crashed", "starting")

    # restart = "on-failure": the agent starts it again, and the row follows with the new pid.
    dashboard.state_is("events", "running", timeout_ms=15_000)
    assert "crashed" in page.evaluate("window.__eventsStates")
    new_pid = dashboard.agent.service("events")["pid"]
    assert new_pid != pid
    dashboard.shows(f"document.querySelector('{row}').dataset.pid === '{new_pid}'", 5_000)
    assert int(dashboard.text(dashboard.field("events", "restarts"))) >= 1
    assert "events" in dashboard.text("#activity")


def test_the_buttons_restart_stop_and_start_a_service(dashboard: Dashboard) -> None:
    page = dashboard.page
    before = dashboard.agent.service("api")
    page.click(f'{dashboard.row("api")} button[data-action="restart"]')
    row = dashboard.row("api")
    dashboard.shows(
        f"document.querySelector('{row}').dataset.pid !== '{before['pid']}'"
        f" && document.querySelector('{row}').dataset.state === 'running'",
        15_000,
    )
    after = dashboard.agent.service("api")
    assert after["pid"] != before["pid"]
    assert page.get_attribute(row, "data-pid") == str(after["pid"])
    restarts = dashboard.field("api", "restarts")
    dashboard.shows(f"document.querySelector('{restarts}').textContent === '{after['restarts']}'", 3_000)

    page.click(f'{dashboard.row("events")} button[data-action="stop"]')
    dashboard.state_is("events", "stopped")
    assert dashboard.agent.service("events")["state"] == "stopped"
    start = f'{dashboard.row("events")} button[data-action="start"]'
    assert page.is_visible(start)
    page.click(start)
    dashboard.state_is("events", "running", timeout_ms=15_000)


def test_the_pin_menu_pins_and_clears_a_route(dashboard: Dashboard) -> None:
    page = dashboard.page
    menu = f'{dashboard.row("api")} select[data-action="pin"]'
    pin = dashboard.field("api", "pin")
    page.select_option(menu, "local")
    dashboard.shows(f"document.querySelector('{pin}').textContent === 'local'", 5_000)
    assert dashboard.agent.client.get("/api/v1/routes") == {"api": "local"}
    page.select_option(menu, "")
    dashboard.shows(f"document.querySelector('{pin}').textContent === ''", 5_000)
    assert dashboard.agent.client.get("/api/v1/routes") == {}


def test_the_charts_and_requests_move_under_traffic(dashboard: Dashboard) -> None:
    page = dashboard.page
    rps = "document.querySelector('canvas[data-chart=\"rps\"]')"
    samples = dashboard.dashboard_state()["samples"]
    end = page.get_attribute('canvas[data-chart="rps"]', "data-end")
    with Traffic(dashboard.listen) as traffic:
        dashboard.shows(f"parseFloat({rps}.dataset.lastRps) > 0", 6_000)
        dashboard.shows(
            f"parseFloat(document.querySelector('{dashboard.field('api', 'rps')}')?.dataset.rps) > 0", 3_000
        )
        dashboard.shows(
            "parseFloat(document.querySelector('canvas[data-chart=\"latency\"]').dataset.lastP95) > 0", 3_000
        )
        # a traffic message a second, each one drawn
        dashboard.shows(f"window.devmeshDashboard.samples >= {samples + 2}", 4_000)
        if SCREENSHOTS:
            save_screenshots(dashboard, Path(__file__).resolve().parents[2] / SCREENSHOTS)
    assert traffic.sent > 0
    assert page.get_attribute('canvas[data-chart="rps"]', "data-end") != end  # the charts moved on
    assert int(page.get_attribute('canvas[data-chart="rps"]', "data-points") or 0) >= 2
    line = page.get_attribute(f"{dashboard.row('api')} .spark .line", "d") or ""
    assert line and line != "M0,19L59,19"  # the sparkline is no longer flat

    # The recent requests, newest first, filtered by service and status class, then by one trace.
    page.wait_for_selector('#requests tbody tr[data-service="api"]', timeout=5_000)
    page.select_option("#req-service", "api")
    page.select_option("#req-status", "4")
    dashboard.shows(
        "(rows => rows.length > 0 && rows.every(r => r.dataset.service === 'api' && r.dataset.status[0] === '4'))"
        "([...document.querySelectorAll('#requests tbody tr')])",
        3_000,
    )
    statuses = page.eval_on_selector_all(
        "#requests tbody tr", "rows => rows.map(r => `${r.dataset.service} ${r.dataset.status}`)"
    )
    assert statuses and all(s.startswith("api 4") for s in statuses), statuses
    times = page.eval_on_selector_all(
        "#requests tbody tr td.c-time", "cells => cells.map(c => c.textContent)"
    )
    assert times == sorted(times, reverse=True)
    trace = page.get_attribute("#requests tbody tr:first-child td.c-trace", "data-trace") or ""
    assert trace
    page.select_option("#req-status", "")
    page.fill("#req-trace", trace)
    dashboard.shows("document.querySelectorAll('#requests tbody tr').length === 1", 3_000)
    page.click("#requests tbody tr:first-child td.c-path")  # a row opens its details and headers
    page.wait_for_selector("#request-detail:not([hidden])", timeout=3_000)
    dashboard.shows(
        "document.querySelector('#request-detail .rd-headers')?.textContent.toLowerCase().includes('host')",
        5_000,
    )
    assert trace in dashboard.text("#request-detail")
    page.fill("#req-trace", "")
    page.select_option("#req-service", "")


def test_a_hundred_services_stay_responsive(dashboard: Dashboard) -> None:
    page = dashboard.page
    client = dashboard.agent.client
    port = dashboard.agent.service("payments")["port"]
    started = time.monotonic()
    for index in range(100):
        client.post(
            "/api/v1/register", {"name": f"load-{index:03d}", "port": port, "version": f"0.{index}.0"}
        )
    dashboard.shows("document.querySelectorAll('#services tbody tr').length === 104", 10_000)
    assert time.monotonic() - started < 15
    assert dashboard.text(dashboard.field("load-042", "version")) == "0.42.0"
    assert dashboard.text(dashboard.field("load-042", "origin")) == "registered"
    page.wait_for_selector('#topology svg g[data-service="load-099"]', timeout=5_000)

    # With 104 rows, an event still reaches the DOM within a second.
    pid = dashboard.agent.service("payments")["pid"]
    os.kill(pid, signal.SIGKILL)
    cell = dashboard.field("payments", "state")
    page.wait_for_function(f"document.querySelector('{cell}').textContent !== 'running'", timeout=1_000)
    # And the page keeps up: a render of a second of traffic for 104 services stays far below a frame
    # budget of a slow machine, and typing in the filter answers at once.
    samples = dashboard.dashboard_state()["samples"]
    dashboard.shows(f"window.devmeshDashboard.samples >= {samples + 2}", 4_000)
    assert dashboard.dashboard_state()["renderMs"] < 250
    page.fill("#service-filter", "load-07")
    dashboard.shows(
        "[...document.querySelectorAll('#services tbody tr')].filter(r => !r.hidden).length === 10", 1_000
    )
    page.fill("#service-filter", "")
    dashboard.state_is("payments", "running", timeout_ms=15_000)
    wait_for(
        lambda: dashboard.agent.service("payments")["state"] == "running", timeout=5, what="payments back"
    )

    # They leave as they came, one `service_removed` each.
    for index in range(100):
        client.delete(f"/api/v1/register/load-{index:03d}")
    dashboard.shows("document.querySelectorAll('#services tbody tr').length === 4", 10_000)
    assert page.query_selector('#topology svg g[data-service="load-099"]') is None


def test_the_page_reconnects_and_the_new_hello_replaces_everything(
    project: Project, browser: Browser
) -> None:
    # Its own agent, on a fixed admin port: the page must find the next agent at the same address.
    shop(project, admin=f"127.0.0.1:{free_port()}")
    with running_agent(project) as agent:
        agent.wait_healthy(timeout=30)
        page, console = open_dashboard(browser, agent)
        try:
            dashboard = Dashboard(agent, browser, page, agent.client.record.admin, 0)
            dashboard.shows("document.querySelector('#connection').dataset.state === 'live'")
            port = agent.service("payments")["port"]
            agent.client.post("/api/v1/register", {"name": "visitor", "port": port})
            page.wait_for_selector(dashboard.row("visitor"), timeout=5_000)
            old_pid = agent.service("api")["pid"]
            agent.stop()
            dashboard.shows("document.querySelector('#connection').dataset.state === 'disconnected'", 5_000)
            assert "disconnected" in dashboard.text("#connection")

            # The next agent: the page finds it (backoff <= 5 s) and its hello replaces the whole state:
            # the registered service was the old agent's, the pids are new.
            with running_agent(project) as again:
                again.wait_healthy(timeout=30)
                dashboard.shows(
                    "window.devmeshDashboard.hellos >= 2"
                    " && document.querySelector('#connection').dataset.state === 'live'",
                    15_000,
                )
                dashboard.shows("document.querySelectorAll('#services tbody tr').length === 4", 5_000)
                assert page.query_selector(dashboard.row("visitor")) is None
                new_pid = again.service("api")["pid"]
                assert new_pid != old_pid
                row = dashboard.row("api")
                dashboard.shows(f"document.querySelector('{row}').dataset.pid === '{new_pid}'", 5_000)

                # The console: nothing but Chromium's own line for each attempt the stopped agent refused
                # (no page can silence those), and nothing at all once live again.
                refused = f"WebSocket connection to 'ws://{dashboard.admin}/api/v1/events' failed"
                assert all(line.startswith(f"error: {refused}") for line in console), console
                page.wait_for_timeout(300)  # Chromium reports refused attempts late, sometimes
                seen = len(console)
                samples = dashboard.dashboard_state()["samples"]
                dashboard.shows(f"window.devmeshDashboard.samples >= {samples + 2}", 4_000)
                assert console[seen:] == []
        finally:
            page.close()


def test_the_header_revision_follows_the_service_events(dashboard: Dashboard) -> None:
    # The hello has the revision as of connecting; `service` and `service_removed` carry the newer ones.
    client = dashboard.agent.client
    rev = "#agent-meta [data-meta='rev']"

    def caught_up(than: int) -> int | None:
        shown = int(dashboard.text(f"{rev} b"))
        return shown if shown > than and shown == dashboard.agent.status()["agent"]["revision"] else None

    before = int(dashboard.text(f"{rev} b"))
    client.post("/api/v1/register", {"name": "visitor", "port": dashboard.agent.service("payments")["port"]})
    dashboard.page.wait_for_selector(dashboard.row("visitor"), timeout=5_000)
    registered = wait_for(lambda: caught_up(before), timeout=5, what="the revision of the registration")
    client.delete("/api/v1/register/visitor")
    dashboard.shows(f"document.querySelector('{dashboard.row('visitor')}') === null", 5_000)
    wait_for(lambda: caught_up(registered), timeout=5, what="the revision of the removal")
    assert dashboard.page.get_attribute(rev, "title") is None  # no "as of connecting" any more


# Keeps the page's sockets, to play the agent's side of the stream.
SOCKET_SPY = """
window.__sockets = [];
window.WebSocket = class extends window.WebSocket {
  constructor(...args) {
    super(...args);
    window.__sockets.push(this);
  }
};
"""


def test_a_client_too_far_behind_reconnects_at_once(dashboard: Dashboard) -> None:
    # The agent drops a client 2,000 messages behind: an `overflow` message, then a close with 1013. The
    # page opens its next socket right away (not after a backoff) and starts again from a new hello.
    page = dashboard.browser.new_page()
    page.add_init_script(SOCKET_SPY)
    console = console_problems(page)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    live = "document.querySelector('#connection').dataset.state === 'live'"
    try:
        page.goto(f"http://{dashboard.admin}/", timeout=20_000)
        page.wait_for_function(f"window.devmeshDashboard.hellos === 1 && {live}", timeout=10_000)
        sockets = page.evaluate(
            """() => {
                window.__sockets.at(-1).dispatchEvent(
                    new MessageEvent("message", {data: JSON.stringify({type: "overflow"})}));
                return window.__sockets.length;  // connect() already ran: no timer in between
            }"""
        )
        assert sockets == 2
        page.wait_for_function(f"window.devmeshDashboard.hellos === 2 && {live}", timeout=5_000)
        assert page.evaluate("window.__sockets[0].readyState") in (2, 3)  # closing, closed
        assert "fell behind" in page.inner_text("#activity")

        # The close alone (the agent may close without the message) does the same.
        sockets = page.evaluate(
            """() => {
                const socket = window.__sockets.at(-1);
                socket.dispatchEvent(new CloseEvent("close", {code: 1013, reason: "too far behind; reconnect"}));
                socket.close();
                return window.__sockets.length;
            }"""
        )
        assert sockets == 3
        page.wait_for_function(f"window.devmeshDashboard.hellos === 3 && {live}", timeout=5_000)
        page.wait_for_selector(dashboard.row("api"), timeout=5_000)
    finally:
        page.close()
    assert not errors, f"the page threw: {errors}"
    assert not console, f"the page's console: {console}"


# -- faults and scenarios ------------------------------------------------------------------------------------


def injected_shown(dashboard: Dashboard, name: str) -> int:
    return int(
        dashboard.page.get_attribute(f"{dashboard.fault(name)} [data-field='injected']", "data-count") or 0
    )


def test_a_fault_added_in_the_form_touches_requests_until_switched_off(dashboard: Dashboard) -> None:
    page = dashboard.page
    client = dashboard.agent.client
    name = "dash-slow-products"
    row = dashboard.fault(name)
    form = "#fault-form"
    dashboard.live()
    try:
        page.click("#fault-add")
        page.wait_for_selector(f"{form}:not([hidden])", timeout=2_000)
        page.fill(f"{form} [name=name]", name)
        page.select_option(f"{form} [name=service]", "api")
        page.select_option(f"{form} [name=kind]", "delay")

        # What the agent refuses, the form says, and nothing is added.
        page.fill(f"{form} [name=value]", "soon")
        page.click(f"{form} button[type=submit]")
        error = f"{form} [data-field=error]"
        page.wait_for_selector(f"{error}:not([hidden])", timeout=3_000)
        assert "not a duration" in dashboard.text(error)
        dashboard.expect_console("status of 422")
        assert page.query_selector(row) is None

        page.fill(f"{form} [name=value]", "30ms")
        page.fill(f"{form} [name=path]", "/api/products")
        page.click(f"{form} button[type=submit]")
        page.wait_for_selector(row, timeout=3_000)
        assert page.is_hidden(form)  # done: the form closes
        assert dashboard.text(f"{row} [data-field=service]") == "api"
        assert dashboard.text(f"{row} [data-field=does]") == "delay 30ms"
        assert dashboard.text(f"{row} [data-field=match]") == "/api/products"
        assert dashboard.text(f"{row} [data-field=source]") == "runtime"
        assert page.get_attribute(f"{row} [data-action='toggle-fault']", "aria-checked") == "true"
        listed = {fault["name"]: fault for fault in client.get("/api/v1/faults")}
        assert listed[name]["delay"] == {"low_ms": 30.0, "high_ms": 30.0}
        assert listed[name]["paths"] == ["/api/products"]

        # The services table marks api, with the fault in its tooltip.
        badge = dashboard.field("api", "faults")
        page.wait_for_selector(f"{badge}:not([hidden])", timeout=2_000)
        assert name in (page.get_attribute(badge, "title") or "")

        # Requests it matches carry X-DevMesh-Fault, the others do not; the count moves with the traffic
        # samples, and the requests table marks the requests it touched.
        before = injected_shown(dashboard, name)
        for _ in range(5):
            status, headers = dashboard.get("api", "/api/products")
            assert status == 200 and headers.get("x-devmesh-fault") == name
        status, headers = dashboard.get("api", "/nope")
        assert status == 404 and "x-devmesh-fault" not in headers
        cell = f"{row} [data-field='injected']"
        dashboard.shows(f"Number(document.querySelector(`{cell}`).dataset.count) >= {before + 5}", 4_000)
        page.wait_for_selector(f'#requests tbody tr[data-fault="{name}"]', timeout=3_000)
        assert name in dashboard.text(f'#requests tbody tr[data-fault="{name}"]')

        # Switched off: listed, and no request is touched any more.
        page.click(f"{row} [data-action='toggle-fault']")
        dashboard.shows(f"document.querySelector('{row}').dataset.enabled === 'false'", 3_000)
        assert page.get_attribute(f"{row} [data-action='toggle-fault']", "aria-checked") == "false"
        page.wait_for_selector(f"{badge}[hidden]", state="attached", timeout=2_000)
        count = {fault["name"]: fault for fault in client.get("/api/v1/faults")}[name]["injected"]
        for _ in range(3):
            status, headers = dashboard.get("api", "/api/products")
            assert status == 200 and "x-devmesh-fault" not in headers
        samples = dashboard.dashboard_state()["samples"]
        dashboard.shows(f"window.devmeshDashboard.samples >= {samples + 2}", 4_000)
        assert injected_shown(dashboard, name) == count

        # A run-time fault has a remove button.
        page.click(f"{row} [data-action='remove-fault']")
        page.wait_for_selector(row, state="detached", timeout=3_000)
        assert name not in {fault["name"] for fault in client.get("/api/v1/faults")}
    finally:
        if any(fault["name"] == name for fault in client.get("/api/v1/faults")):
            client.delete(f"/api/v1/faults/{name}")
        if page.is_visible("#fault-form"):
            page.click("#fault-form [data-action=cancel]")


def test_a_scenario_run_from_the_dashboard_counts_down_and_ends_by_itself(dashboard: Dashboard) -> None:
    page = dashboard.page
    client = dashboard.agent.client
    form = "#scenario-form"
    banner = dashboard.banner("down:api")
    dashboard.live()
    try:
        page.click("#scenario-open")  # the scenarios that can be run are read now
        page.wait_for_selector(f'{form} [name=scenario] option[value="down:SERVICE"]', state="attached")

        # partition:PEER aims at a peer; this agent has none, so there is nothing to run.
        page.select_option(f"{form} [name=scenario]", "partition:PEER")
        assert dashboard.text(f"{form} [data-field=target-name]") == "Peer"
        assert page.is_disabled(f"{form} [name=target]")
        assert page.is_disabled(f"{form} button[type=submit]")

        page.select_option(f"{form} [name=scenario]", "down:SERVICE")
        assert dashboard.text(f"{form} [data-field=target-name]") == "Service"
        assert page.input_value(f"{form} [name=duration]") == "30s"
        page.select_option(f"{form} [name=target]", "api")
        assert "api answers 503" in dashboard.text(f"{form} [data-field=describe]")
        page.fill(f"{form} [name=duration]", "3s")
        page.click(f"{form} button[type=submit]")
        page.wait_for_selector(banner, timeout=3_000)
        started = time.monotonic()
        assert page.is_hidden(form)

        # The banner counts down, on the page's own clock.
        remaining = f"{banner} [data-field='remaining']"
        first = int(page.get_attribute(remaining, "data-seconds") or 0)
        assert 1 <= first <= 3 and dashboard.text(remaining) == f"{first}s"
        dashboard.shows(f"Number(document.querySelector(`{remaining}`).dataset.seconds) < {first}", 2_000)
        assert "api: outage 503" in dashboard.text(banner)
        assert dashboard.text(f"{dashboard.fault('down:api')} [data-field=source]") == "scenario down:api"

        # Meanwhile api answers 503, marked.
        status, headers = dashboard.get("api", "/api/products")
        assert status == 503 and headers.get("x-devmesh-fault") == "down:api"
        page.wait_for_selector('#requests tbody tr[data-fault="down:api"][data-status="503"]', timeout=3_000)

        # The agent ends it on time, and the banner goes by itself.
        page.wait_for_selector(banner, state="detached", timeout=6_000)
        assert time.monotonic() - started > 1.5
        assert page.query_selector(dashboard.fault("down:api")) is None
        assert client.get("/api/v1/status")["scenarios"] == []
        status, headers = dashboard.get("api", "/api/products")
        assert status == 200 and "x-devmesh-fault" not in headers
        assert "down:api" in dashboard.text("#activity")
    finally:
        if client.get("/api/v1/status")["scenarios"]:
            client.delete("/api/v1/faults")
        if page.is_visible(form):
            page.click(f"{form} [data-action=cancel]")


def test_scenarios_started_elsewhere_show_at_once_and_stop_from_anywhere(dashboard: Dashboard) -> None:
    page = dashboard.page
    client = dashboard.agent.client
    root = dashboard.agent.project.root
    dashboard.live()
    try:
        # From the API: the banner within a second, counting down from the scenario's own clock.
        client.post("/api/v1/scenarios/slow:payments/run", {"duration": "45s"})
        asked = time.monotonic()
        page.wait_for_selector(dashboard.banner("slow:payments"), timeout=1_000)
        assert time.monotonic() - asked < 1.0
        remaining = f"{dashboard.banner('slow:payments')} [data-field='remaining']"
        assert 43 <= int(page.get_attribute(remaining, "data-seconds") or 0) <= 45
        badge = dashboard.field("payments", "faults")
        page.wait_for_selector(f"{badge}:not([hidden])", timeout=1_000)
        assert "slow:payments" in (page.get_attribute(badge, "title") or "")

        # Stopped from the CLI: the banner goes.
        stopped = devmesh("chaos", "stop", "slow:payments", cwd=root)
        assert stopped.returncode == 0, stopped.stderr
        page.wait_for_selector(dashboard.banner("slow:payments"), state="detached", timeout=1_000)
        page.wait_for_selector(f"{badge}[hidden]", state="attached", timeout=1_000)

        # Started from the CLI, stopped with the banner's button.
        ran = devmesh("chaos", "run", "flaky:events", "--duration", "1m", "--detach", cwd=root)
        assert ran.returncode == 0, ran.stderr
        page.wait_for_selector(dashboard.banner("flaky:events"), timeout=1_000)
        page.click(f"{dashboard.banner('flaky:events')} [data-action='stop-scenario']")
        page.wait_for_selector(dashboard.banner("flaky:events"), state="detached", timeout=3_000)
        assert client.get("/api/v1/status")["scenarios"] == []

        # "Clear all" (a second click confirms) removes run-time faults and stops every scenario.
        client.post("/api/v1/scenarios/reset:web/run", {"duration": "1m"})
        client.post("/api/v1/faults", {"name": "dash-teapot", "service": "events", "abort": 418})
        page.wait_for_selector(dashboard.banner("reset:web"), timeout=1_000)
        page.wait_for_selector(dashboard.fault("dash-teapot"), timeout=1_000)
        page.click("#faults-clear")
        assert page.query_selector(dashboard.fault("dash-teapot")) is not None  # only armed
        page.click("#faults-clear")
        page.wait_for_selector(dashboard.banner("reset:web"), state="detached", timeout=3_000)
        page.wait_for_selector(dashboard.fault("dash-teapot"), state="detached", timeout=3_000)
        assert client.get("/api/v1/faults") == []
        assert page.is_visible("#faults-empty")
    finally:
        if client.get("/api/v1/status")["scenarios"] or client.get("/api/v1/faults"):
            client.delete("/api/v1/faults")
