"""How the engine knows which config nginx serves: a loopback-only control server, and the error log.

A reload's exit status says nothing (nginx keeps its old config when the new one fails to load, e.g. on a
port another process holds), so every config carries a control server on 127.0.0.1 whose one location
answers the config's token: its generation, hash and revision. The engine reloads, then asks until the
new token answers; meanwhile it reads the error log from where it ended before the reload, where nginx
writes the `[emerg]` that explains a config it refused.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

CONTROL_PATH = "/.devmesh/config"
CONTROL_REQUEST_TIMEOUT_S = 1.0
_REVISION_SAFE_RE = re.compile(r"[^A-Za-z0-9._:@+/-]")
_FAILURE_LEVELS = ("[emerg]", "[alert]", "[crit]")
_MAX_ANSWER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Token:
    """What a config's control server answers; the generation is new for every file the engine writes,
    so an answer proves that file is the one loaded."""

    generation: str  # "<engine nonce>.<n>"
    config_hash: str
    revision_id: str

    def text(self) -> str:
        return f"{self.generation} {self.config_hash} {_REVISION_SAFE_RE.sub('_', self.revision_id)}"


def control_server(port: int, token: Token) -> tuple[str, ...]:
    """The control server's lines, for the end of the http {} block."""
    return (
        "# devmesh's control server: the agent reads which config is live (loopback only).",
        "server {",
        f"    listen 127.0.0.1:{port};",
        "    server_name _;",
        "    access_log off;",
        "    allow 127.0.0.1;",
        "    deny all;",
        f"    location = {CONTROL_PATH} {{",
        "        default_type text/plain;",
        f'        return 200 "{token.text()}\\n";',
        "    }",
        "    location / {",
        "        return 404;",
        "    }",
        "}",
    )


def live_token(port: int, *, timeout_s: float = CONTROL_REQUEST_TIMEOUT_S) -> str | None:
    """The token the running nginx answers on the control server; None when nothing answers."""
    request = f"GET {CONTROL_PATH} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(request)
            data = b""
            while len(data) < _MAX_ANSWER_BYTES:
                chunk = sock.recv(_MAX_ANSWER_BYTES)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        return None
    return body.decode("utf-8", "replace").strip() or None


class ErrorLog:
    """nginx's error log, read from a mark onwards."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def since(self, mark: int) -> list[str]:
        """The lines written after `mark` (all of them if the file was truncated or replaced)."""
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, 2)
                handle.seek(mark if mark <= size else 0)
                text = handle.read(1 << 20).decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def failures_since(self, mark: int) -> list[str]:
        """The emerg/alert/crit lines after `mark`: why nginx refused a config or lost a worker."""
        return [line for line in self.since(mark) if any(level in line for level in _FAILURE_LEVELS)]
