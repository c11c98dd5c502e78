"""The example shop's services, each as a real child process on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support import wait_for

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def service(name: str, **env: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SHOP / "services" / name / "app.py")],
        env={**os.environ, "PORT": str(port), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _answers(port) or process.poll() is not None, what=f"{name} to listen")
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        yield port, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_every_service_has_health_and_a_version() -> None:
    for name in ("web", "api", "payments", "events"):
        with service(name, SERVICE_VERSION="9.9.9") as (port, _):
            status, body = get(f"http://127.0.0.1:{port}/health")
            assert status == 200
            assert body == {"status": "ok", "service": name, "version": "9.9.9"}


def test_sigterm_exits_promptly_and_cleanly() -> None:
    for name in ("web", "api", "payments", "events"):
        with service(name) as (_port, process):
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(5) == 0
            assert time.monotonic() - started < 2
            assert process.stderr is not None
            assert b"Traceback" not in process.stderr.read()


def test_missing_port_is_a_clear_error() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PORT"}
    result = subprocess.run(
        [sys.executable, str(SHOP / "services" / "api" / "app.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode != 0
    assert "PORT is not set" in result.stderr


def test_an_order_is_charged_by_payments() -> None:
    with service("payments", PAYMENTS_DELAY_MS="10-20") as (payments, _):
        with service("api", PAYMENTS_URL=f"http://127.0.0.1:{payments}") as (api, _):
            status, products = get(f"http://127.0.0.1:{api}/api/products")
            assert status == 200
            assert len(products) >= 3
            status, order = post(f"http://127.0.0.1:{api}/api/orders", {"product_id": products[0]["id"]})
            assert status == 201
            assert order["charge"]["charge_id"].startswith("ch_")
            assert order["charge"]["amount_cents"] == products[0]["price_cents"]
            assert get(f"http://127.0.0.1:{api}/api/orders")[1] == [order]


def test_api_answers_502_when_payments_is_down() -> None:
    with service("api", PAYMENTS_URL=f"http://127.0.0.1:{free_port()}") as (api, _):
        status, body = post(f"http://127.0.0.1:{api}/api/orders", {"product_id": 1})
        assert status == 502
        assert "payments is unreachable" in body["error"]


def test_api_sends_cors_headers_for_the_page() -> None:
    with service("api") as (api, _):
        request = urllib.request.Request(f"http://127.0.0.1:{api}/api/orders", method="OPTIONS")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_events_stream_delivers_each_event_as_it_happens() -> None:
    with service("events", EVENTS_INTERVAL_S="0.2") as (port, _):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream", timeout=10) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            started = time.monotonic()
            lines = []
            while len([line for line in lines if line.startswith(b"data:")]) < 2:
                lines.append(response.readline())
            # Two events arrive while the stream stays open: nothing is buffered until the end.
            assert time.monotonic() - started < 5
            event = json.loads(next(line for line in lines if line.startswith(b"data:"))[5:])
            assert event["n"] == 1


def test_web_page_calls_the_api_from_the_browser() -> None:
    with service("web", API_URL="http://api.example.test:7080") as (port, _):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            page = response.read().decode()
        assert "fetch(`${api}/api/products`)" in page
        assert "EventSource" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config.js", timeout=5) as response:
            assert b'"apiUrl": "http://api.example.test:7080"' in response.read()
