"""What the example services share: the port from devmesh, a version, /health, JSON, clean SIGTERM.

Standard library only, so the example starts in a blink and needs nothing installed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def port_from_env() -> int:
    port = os.environ.get("PORT")
    if not port or not port.isdigit():
        sys.exit("PORT is not set: run this service through `devmesh up`, or set PORT=8000")
    return int(port)


class Handler(BaseHTTPRequestHandler):
    """A request handler with helpers for JSON, CORS and the shared /health endpoint."""

    service = "service"
    version = "0.0.0"
    protocol_version = "HTTP/1.1"

    def send_json(self, status: int, payload: Any, *, cors: bool = True) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cors:
            self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_text(self, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length == 0:
            return {}
        return json.loads(self.rfile.read(length))

    def handle_health(self) -> bool:
        if self.path == "/health":
            self.send_json(200, {"status": "ok", "service": self.service, "version": self.version})
            return True
        return False

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Content-Type")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        if self.path == "/health":
            return  # devmesh checks every second: those lines would drown the real traffic
        print(f"{self.address_string()} {format % args}", flush=True)


def serve(handler: type[Handler], *, on_stop: Callable[[], None] | None = None) -> None:
    """Serve on 127.0.0.1:$PORT until SIGTERM or Ctrl-C, then exit 0."""
    handler.version = os.environ.get("SERVICE_VERSION", handler.version)
    server = ThreadingHTTPServer(("127.0.0.1", port_from_env()), handler)
    server.daemon_threads = True

    def stop(_signum: int, _frame: object) -> None:
        if on_stop is not None:
            on_stop()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"{handler.service} {handler.version} listening on http://127.0.0.1:{server.server_port}", flush=True
    )
    server.serve_forever(poll_interval=0.2)
    server.server_close()


def post_json(url: str, payload: Any, *, timeout: float) -> tuple[int, Any]:
    """POST JSON to `url`; (status, decoded body).

    Names under .localhost (RFC 6761) are loopback: browsers know it, but the system resolver may not,
    so they are reached at 127.0.0.1 with the name kept in the Host header, which is what devmesh routes on.
    """
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    connect_to = "127.0.0.1" if host == "localhost" or host.endswith(".localhost") else host
    connection = http.client.HTTPConnection(connect_to, port, timeout=timeout)
    try:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Host": parts.netloc}
        connection.request("POST", parts.path or "/", body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, {"error": data[:200].decode("utf-8", "replace")}
    finally:
        connection.close()
