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
from pathlib import Path
from typing import IO, Literal, NamedTuple

from devmesh import const

AccessLogFormat = Literal["json", "text", "off"]

# Prometheus's default buckets, in seconds: they suit both a 1 ms cache hit and a 10 s report.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


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

    def as_json(self) -> str:
        # By hand, not json.dumps (~3x faster). Only the method and path can need escaping: the host
        # passed the proxy's host[:port] check, trace ids its token check, the rest is devmesh's own.
        return (
            f'{{"time":"{_iso(self.time)}","method":{_json_string(self.method)},'
            f'"host":"{self.host}","path":{_json_string(self.path)},"status":{self.status},'
            f'"service":"{self.service}","origin":"{self.origin}","duration_ms":{self.duration_s * 1000:.3f},'
            f'"trace_id":"{self.trace_id}","endpoint":"{self.endpoint}"}}'
        )

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


class RequestStats:
    """Counters and a duration histogram per (service, origin), read by /metrics and `status`."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # (service, origin) -> [count per bucket..., +Inf count, sum of seconds]
        self.durations: dict[tuple[str, str], list[float]] = {}
        self.upstream_errors: dict[str, int] = {}
        self.retries: dict[str, int] = {}

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

    def retry(self, service: str) -> None:
        self.retries[service] = self.retries.get(service, 0) + 1

    def total(self) -> int:
        return sum(self.requests.values())


class AccessLog:
    """Access log lines in `.devmesh/logs/access.log` (json or text), written in batches; the last
    `kept` records stay in memory for the dashboard and `devmesh replay`."""

    def __init__(self, path: Path | None, log_format: AccessLogFormat, *, kept: int = 1000) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the server: no lookup per request
        self.path = path
        self.format = log_format
        self.recent: deque[RequestRecord] = deque(maxlen=max(kept, 1))
        self._pending: list[str] = []
        self._render = RequestRecord.as_json if log_format == "json" else RequestRecord.as_text
        self._file: IO[str] | None = None
        self._flush_handle: asyncio.TimerHandle | None = None

    def record(self, entry: RequestRecord) -> None:
        self.recent.append(entry)
        if self.format == "off" or self.path is None:
            return
        # Formatted now, written in a batch: formatting a whole batch at once was a pause of several
        # milliseconds for every request in flight (the proxy's p99).
        self._pending.append(self._render(entry))
        if self._flush_handle is None:
            loop = self.loop if self.loop is not None else asyncio.get_running_loop()
            self._flush_handle = loop.call_later(const.ACCESS_LOG_FLUSH_S, self.flush)

    def flush(self) -> None:
        self._flush_handle = None
        if not self._pending or self.path is None:
            return
        pending, self._pending = self._pending, []
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
