"""What the proxy records of every request: an access log line and counters (DESIGN §5 metric names).

Both sit on the hot path, so recording is an append and a few dict updates; formatting and writing the
log lines happens in batches, off the request, every ACCESS_LOG_FLUSH_S.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal, NamedTuple, Protocol

from devmesh import const

AccessLogFormat = Literal["json", "text", "off"]

# In seconds. Local services answer in well under a millisecond to a few seconds: Prometheus's default
# buckets start at 5 ms and would put every local request in the first one.
DURATION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestRecord(NamedTuple):
    """One proxied request, as the access log, the counters and the dashboard see it.

    A NamedTuple: built once per request, it must cost less than a dataclass.
    """

    time: float
    method: str
    host: str
    path: str
    status: int
    service: str
    origin: str
    duration_s: float
    trace_id: str
    endpoint: str
    id: int = 0  # this agent's sequence number: `devmesh replay ID`
    peer: str = ""  # the peer that served it, for an endpoint at a peer
    traceparent: str = ""  # the W3C context sent upstream: its span id is the proxy's span
    parent_span: str = ""  # the caller's span id, when the request came with a traceparent
    request_bytes: int = 0  # body bytes, as received (not counting chunk framing)
    response_bytes: int = 0
    fault: str = ""  # the fault that touched it
    headers: list[tuple[bytes, bytes]] | None = None  # the request's headers, as received (not logged)

    def as_json(self) -> str:
        # By hand, not json.dumps (~3x faster). Only the method and path can need escaping: the host
        # passed the proxy's host[:port] check, trace ids its token check, the rest is devmesh's own.
        return (
            f'{{"time":"{_iso(self.time)}","id":{self.id},"method":{_json_string(self.method)},'
            f'"host":"{self.host}","path":{_json_string(self.path)},"status":{self.status},'
            f'"service":"{self.service}","origin":"{self.origin}","duration_ms":{self.duration_s * 1000:.3f},'
            f'"trace_id":"{self.trace_id}","endpoint":"{self.endpoint}","peer":"{self.peer}",'
            f'"request_bytes":{self.request_bytes},"response_bytes":{self.response_bytes}}}'
        )

    def summary(self, *, headers: bool = False) -> dict[str, object]:
        """The record as the admin API and the events stream show it; secrets in headers are masked."""
        entry: dict[str, object] = {
            "id": self.id,
            "time": round(self.time, 6),
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "status": self.status,
            "service": self.service,
            "origin": self.origin,
            "endpoint": self.endpoint,
            "peer": self.peer,
            "duration_ms": round(self.duration_s * 1000, 3),
            "trace_id": self.trace_id,
            "traceparent": self.traceparent,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "fault": self.fault,
        }
        if headers:
            entry["request_headers"] = [
                [
                    name.decode("latin-1"),
                    "[masked]" if name.lower() in MASKED_HEADERS else value.decode("latin-1"),
                ]
                for name, value in self.headers or ()
            ]
        return entry

    def as_text(self) -> str:
        return (
            f"{_iso(self.time)} {self.method} {self.host}{self.path} {self.status} "
            f"{self.service or '-'} {self.origin or '-'} {self.duration_s * 1000:.1f}ms {self.trace_id}"
        )


def _json_string(value: str) -> str:
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


_second_cache: list[tuple[int, str]] = [(-1, "")]


def _iso(timestamp: float) -> str:
    whole = int(timestamp)
    cached_second, text = _second_cache[0]
    if whole != cached_second:  # strftime once per second, not once per line
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(whole))
        _second_cache[0] = (whole, text)
    return f"{text}.{int((timestamp - whole) * 1000):03d}"


# Read access to recent requests needs no token (like the rest of the admin API's reads): credentials
# are shown masked. `devmesh replay` sends the real values, from memory, and needs the token.
MASKED_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"x-api-key"})


class RequestStats:
    """Counters and a duration histogram per (service, origin), read by /metrics and `status`."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # (service, origin) -> [count per bucket..., +Inf count, sum of seconds]
        self.durations: dict[tuple[str, str], list[float]] = {}
        self.upstream_errors: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.faults: dict[str, int] = {}  # requests each fault touched
        # (service, result) -> mirror copies: sent, failed, dropped, too_large (proxy/mirror.py)
        self.mirrored: dict[tuple[str, str], int] = {}

    def count(self, service: str, origin: str, status: int, duration_s: float) -> None:
        key = (service, origin, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get((service, origin))
        if histogram is None:
            histogram = self.durations[(service, origin)] = [0.0] * (len(DURATION_BUCKETS_S) + 2)
        histogram[bisect.bisect_left(DURATION_BUCKETS_S, duration_s)] += 1
        histogram[-1] += duration_s

    def upstream_error(self, service: str) -> None:
        self.upstream_errors[service] = self.upstream_errors.get(service, 0) + 1

    def fault(self, names: tuple[str, ...]) -> None:
        for name in names:
            self.faults[name] = self.faults.get(name, 0) + 1

    def mirror(self, service: str, result: str) -> None:
        key = (service, result)
        self.mirrored[key] = self.mirrored.get(key, 0) + 1

    def retry(self, service: str) -> None:
        self.retries[service] = self.retries.get(service, 0) + 1

    def total(self) -> int:
        return sum(self.requests.values())


class RecordSink(Protocol):
    """Something that takes every finished request (the OTLP exporter)."""

    def record(self, entry: RequestRecord) -> None: ...


class AccessLog:
    """Access log lines (json or text), written in batches to a file, or to the terminal through
    `echo`; the last `kept` records stay in memory for the dashboard and `devmesh replay`, and each
    record goes on to `sink` when one is set (traces)."""

    def __init__(
        self,
        path: Path | None,
        log_format: AccessLogFormat,
        *,
        kept: int = 1000,
        echo: Callable[[str], None] | None = None,
        sink: RecordSink | None = None,
    ) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the server: no lookup per request
        self.path = path
        self.format = log_format
        self.echo = echo
        self.sink = sink
        self.recent: deque[RequestRecord] = deque(maxlen=max(kept, 1))
        self._writes = log_format != "off" and (path is not None or echo is not None)
        self._pending: list[str] = []
        self._render = RequestRecord.as_json if log_format == "json" else RequestRecord.as_text
        self._file: IO[str] | None = None
        self._flush_handle: asyncio.TimerHandle | None = None

    def record(self, entry: RequestRecord) -> None:
        self.recent.append(entry)
        if self.sink is not None:
            self.sink.record(entry)
        if not self._writes:
            return
        # Formatted now, written in a batch: formatting a whole batch at once was a pause of several
        # milliseconds for every request in flight (the proxy's p99).
        self._pending.append(self._render(entry))
        if self._flush_handle is None:
            loop = self.loop if self.loop is not None else asyncio.get_running_loop()
            self._flush_handle = loop.call_later(const.ACCESS_LOG_FLUSH_S, self.flush)

    def find(self, request_id: int) -> RequestRecord | None:
        """A recent request by its id (ids grow, so the search starts from the newest)."""
        for entry in reversed(self.recent):
            if entry.id == request_id:
                return entry
            if entry.id < request_id:
                break
        return None

    def flush(self) -> None:
        self._flush_handle = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self.echo is not None:
            for line in pending:
                self.echo(line)
            return
        if self.path is None:
            return
        pending.append("")
        text = "\n".join(pending)
        try:
            handle = self._open()
            handle.write(text)
            handle.flush()
            if handle.tell() > const.LOG_FILE_MAX_BYTES:
                self._rotate()
        except OSError:
            # A full disk must not take the proxy down; the counters still count.
            self._close_file()

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self.flush()
        self._close_file()

    def _open(self) -> IO[str]:
        if self._file is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        return self._file

    def _rotate(self) -> None:
        assert self.path is not None
        self._close_file()
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
