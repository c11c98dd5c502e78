"""The proxy's own responses: error pages in HTML or JSON (by `Accept`) that say what happened and what to do.

Never on the hot path: they are built only when a request cannot be forwarded.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

REASONS = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True, slots=True)
class ErrorPage:
    status: int
    title: str
    message: str
    hint: str | None = None
    service: str | None = None
    tried: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        document: dict[str, object] = {"status": self.status, "error": self.title, "message": self.message}
        if self.service is not None:
            document["service"] = self.service
        if self.hint is not None:
            document["hint"] = self.hint
        if self.tried:
            document["tried"] = self.tried
        if self.hosts:
            document["hosts"] = self.hosts
        return document


def wants_json(accept: bytes | None) -> bool:
    """JSON for API clients (`Accept: application/json`, or no Accept at all, as curl and SDKs send
    `*/*`), HTML for browsers, which always list text/html."""
    if not accept:
        return True
    lowered = accept.lower()
    return b"text/html" not in lowered


def render(page: ErrorPage, accept: bytes | None) -> tuple[bytes, bytes]:
    """(content type, body) for `page`."""
    if wants_json(accept):
        return b"application/json", json.dumps(page.as_dict(), indent=2).encode() + b"\n"
    return b"text/html; charset=utf-8", _html(page).encode()


def _html(page: ErrorPage) -> str:
    escape = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{page.status} {escape(page.title)} · devmesh</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;"
        "color:#1f2328}h1{font-size:1.4rem}code{background:#f0f2f4;padding:.1rem .3rem;border-radius:4px}"
        "li{margin:.2rem 0}.muted{color:#656d76}</style></head><body>",
        f"<h1>{page.status} · {escape(page.title)}</h1>",
        f"<p>{escape(page.message)}</p>",
    ]
    if page.hint:
        parts.append(f"<p><strong>What to do:</strong> {_code_spans(page.hint)}</p>")
    if page.tried:
        parts.append("<p>Tried:</p><ul>")
        parts.extend(f"<li><code>{escape(item)}</code></li>" for item in page.tried)
        parts.append("</ul>")
    if page.hosts:
        parts.append("<p>Known hosts:</p><ul>")
        for host in page.hosts:
            link = escape(host)
            if host.startswith("*"):
                parts.append(f"<li><code>{link}</code></li>")
            else:
                parts.append(f"<li><a href='//{link}'>{link}</a></li>")
        parts.append("</ul>")
    parts.append("<p class='muted'>served by devmesh</p></body></html>\n")
    return "".join(parts)


def _code_spans(text: str) -> str:
    """`devmesh run api` in backquotes becomes <code>; everything else is escaped."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{piece}</code>" if index % 2 else piece for index, piece in enumerate(pieces))


def response_bytes(
    page: ErrorPage,
    accept: bytes | None,
    *,
    trace_id: str = "",
    close: bool = True,
    head_only: bool = False,
    fault: str = "",
) -> bytes:
    """A whole HTTP/1.1 response carrying `page`; `fault`: the faults that made it (X-DevMesh-Fault)."""
    content_type, body = render(page, accept)
    head = (
        f"HTTP/1.1 {page.status} {REASONS.get(page.status, 'Error')}\r\n"
        f"Content-Type: {content_type.decode()}\r\nContent-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        f"X-DevMesh-Trace-ID: {trace_id or '-'}\r\n"
        f"{'X-DevMesh-Fault: ' + fault + chr(13) + chr(10) if fault else ''}"
        f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n"
    ).encode("latin-1")
    return head if head_only else head + body
