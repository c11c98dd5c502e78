"""The remote fallback's health and version, probed in the background while the agent runs.

Every `REMOTE_PROBE_INTERVAL_S` each service's `remote` gets `GET /` (or the path of the service's
`health.http`), through the same verified TLS as the proxy's requests to it, with the remote's own name
as Host. Any answer below 500 is healthy. The version comes from the answer's `X-DevMesh-Version` header
or, without one, from `GET /version` answering JSON `{"version": "1.4.2"}` or the plain text `1.4.2`.

Bounded: one task per remote, `REMOTE_PROBE_CONCURRENCY` probes at once, each request within
`REMOTE_PROBE_TIMEOUT_S`, heads and bodies read up to a limit; `close()` cancels everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from devmesh import const
from devmesh.routing.remote import RemoteStatus

VERSION_HEADER = "x-devmesh-version"
VERSION_PATH = "/version"
_VERSION_RE = re.compile(r"^v?[0-9][0-9A-Za-z.+!_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """A remote to probe: its URL, and the path asked for (the service's `health.http`, else `/`)."""

    url: str
    path: str = "/"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    healthy: bool
    version: str | None = None
    reason: str | None = None


def version_from_headers(headers: Mapping[str, str]) -> str | None:
    """The version a remote announces in its answer's `X-DevMesh-Version` header (names lowercased)."""
    return _version_token(headers.get(VERSION_HEADER))


def version_from_body(body: bytes, content_type: str | None) -> str | None:
    """The version in a `GET /version` answer: JSON `{"version": "1.4.2"}`, or plain text `1.4.2`.

    Anything else (an HTML page a catch-all route serves for every path, a long text) is no version.
    """
    kind = (content_type or "").split(";")[0].strip().lower()
    text = body.decode("utf-8", errors="replace").strip()
    if "json" in kind or (not kind and text.startswith("{")):
        try:
            document = json.loads(text)
        except ValueError:
            return None
        value = document.get("version") if isinstance(document, dict) else None
        return _version_token(str(value)) if isinstance(value, str | int | float) else None
    if kind in ("", "text/plain"):
        lines = text.splitlines()
        return _version_token(lines[0]) if len(lines) == 1 else None
    return None


def _version_token(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value if _VERSION_RE.match(value) else None


class _Answer:
    """httptools callbacks: the status, the headers (lowercased names) and the body up to a limit."""

    def __init__(self, body_limit: int) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.body_limit = body_limit
        self.head_done = False
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) < self.body_limit:
            self.body += body[: self.body_limit - len(self.body)]

    def on_message_complete(self) -> None:
        self.complete = True


async def fetch(
    url: str,
    path: str,
    *,
    context: ssl.SSLContext | None,
    timeout_s: float,
    body_limit: int = 0,
) -> _Answer:
    """`GET path` from the remote at `url`, as the proxy would send it (its own name as Host, TLS with
    SNI and certificate verification for https). Reads the head, and the body up to `body_limit`.

    Raises OSError (refused, reset, TLS), TimeoutError, or ValueError for an answer that is not HTTP.
    """
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    answer = _Answer(body_limit)
    parser = httptools.HttpResponseParser(answer)
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context if tls else None, server_hostname=host if tls else None
        )
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: devmesh-remote-probe\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            await _read_answer(reader, parser, answer)
    finally:
        writer.close()
        # The answer is in hand: a remote slow to finish the TLS close does not turn it into a failure.
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                await writer.wait_closed()
    if not answer.head_done:
        raise ValueError("no HTTP answer")
    answer.status = parser.get_status_code()
    return answer


async def _read_answer(
    reader: asyncio.StreamReader, parser: httptools.HttpResponseParser, answer: _Answer
) -> None:
    """Feed `parser` until the head (and the body `answer` wants) is in, or the remote closes."""
    received = 0
    while True:
        data = await reader.read(65536)
        if not data:
            return
        received += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as error:
            raise ValueError(f"not an HTTP answer ({error})") from None
        if answer.complete or (answer.head_done and len(answer.body) >= answer.body_limit):
            return
        if not answer.head_done and received > const.REMOTE_PROBE_MAX_HEAD_BYTES:
            raise ValueError("an answer head larger than devmesh reads")


def _reason(path: str, error: BaseException, timeout_s: float) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"GET {path}: certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"GET {path}: TLS: {error.reason or error}"
    if isinstance(error, TimeoutError):
        return f"GET {path}: no answer within {timeout_s:g}s"
    if isinstance(error, OSError):
        return f"GET {path}: {(error.strerror or str(error)).lower()}"
    return f"GET {path}: {error}"


async def probe_remote(
    target: RemoteTarget, *, context: ssl.SSLContext | None, timeout_s: float
) -> ProbeResult:
    """One probe: is the remote answering (below 500), and which version does it announce?"""
    try:
        answer = await fetch(target.url, target.path, context=context, timeout_s=timeout_s)
    except (OSError, TimeoutError, ValueError) as error:
        return ProbeResult(False, reason=_reason(target.path, error, timeout_s))
    if answer.status >= 500:
        return ProbeResult(False, reason=f"GET {target.path} answered {answer.status}")
    version = version_from_headers(answer.headers)
    if version is None:
        version = await _version_endpoint(target.url, context=context, timeout_s=timeout_s)
    return ProbeResult(True, version=version)


async def _version_endpoint(url: str, *, context: ssl.SSLContext | None, timeout_s: float) -> str | None:
    """The version `GET /version` announces, if it answers 2xx with one; None on anything else."""
    try:
        answer = await fetch(
            url, VERSION_PATH, context=context, timeout_s=timeout_s, body_limit=const.REMOTE_VERSION_MAX_BYTES
        )
    except (OSError, TimeoutError, ValueError):
        return None
    if not 200 <= answer.status < 300:
        return None
    return version_from_headers(answer.headers) or version_from_body(
        answer.body, answer.headers.get("content-type")
    )


def next_status(
    current: RemoteStatus | None, result: ProbeResult, failures: int, unhealthy_after: int
) -> RemoteStatus:
    """The status after a probe. The first probe decides at once; a remote that answered is taken out
    after `unhealthy_after` failed probes in a row (`failures` counts this one), so one lost probe does
    not take away a fallback that works. The last announced version is kept while it is down."""
    if result.healthy:
        return RemoteStatus(True, result.version)
    if current is not None and current.healthy and failures < unhealthy_after:
        return current
    return RemoteStatus(False, current.version if current is not None else None, result.reason)


class RemoteProber:
    """Probes every remote it is given until closed; `on_change(service)` after each change of status."""

    def __init__(
        self,
        *,
        tls_context: Callable[[], ssl.SSLContext],
        on_change: Callable[[str], None],
        interval_s: float = const.REMOTE_PROBE_INTERVAL_S,
        timeout_s: float = const.REMOTE_PROBE_TIMEOUT_S,
        unhealthy_after: int = const.REMOTE_PROBE_UNHEALTHY_AFTER,
        concurrency: int = const.REMOTE_PROBE_CONCURRENCY,
    ) -> None:
        self._tls_context = tls_context
        self._on_change = on_change
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._unhealthy_after = unhealthy_after
        self._slots = asyncio.Semaphore(concurrency)
        self.statuses: dict[str, RemoteStatus] = {}
        self._targets: dict[str, RemoteTarget] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def update(self, targets: Mapping[str, RemoteTarget]) -> None:
        """Probe exactly `targets` (service -> remote) from now on: new ones at once, changed ones afresh."""
        for name in list(self._targets):
            if targets.get(name) != self._targets[name]:
                self._tasks.pop(name).cancel()
                del self._targets[name]
                if self.statuses.pop(name, None) is not None:
                    self._on_change(name)
        loop = asyncio.get_running_loop()
        for name, target in targets.items():
            if name not in self._targets:
                self._targets[name] = target
                self._tasks[name] = loop.create_task(
                    self._follow(name, target), name=f"devmesh-remote-{name}"
                )

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._targets.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self, name: str, target: RemoteTarget) -> None:
        failures = 0
        while True:
            context = self._tls_context() if target.url.startswith("https:") else None
            async with self._slots:
                try:
                    result = await probe_remote(target, context=context, timeout_s=self._timeout_s)
                except Exception as error:  # a probe must never end the loop that follows the remote
                    result = ProbeResult(False, reason=f"GET {target.path}: {error!r}")
            failures = 0 if result.healthy else failures + 1
            current = self.statuses.get(name)
            status = next_status(current, result, failures, self._unhealthy_after)
            if status != current:
                self.statuses[name] = status
                self._on_change(name)
            await asyncio.sleep(self._interval_s)
