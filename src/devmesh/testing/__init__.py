"""Test helpers: bring a project's mesh up for a test session and tell the tests where its services are.

`devmesh.testing.pytest_plugin` (installed as the pytest plugin `devmesh`) uses `MeshSession`; other
test runners can too:

    session = MeshSession(Path("devmesh.toml"))
    mesh = session.start()          # `devmesh up --detach` unless an agent runs already; waits healthy
    mesh.url("api")                 # "http://api.localhost:7080"
    session.stop()                  # `devmesh down`, only if start() started the agent

Importing this module imports nothing beyond the standard library: the rest of devmesh (and its
dependencies) is imported by `start()`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devmesh.agent.client import AdminClient

__all__ = ["Mesh", "MeshError", "MeshSession"]

DEFAULT_TIMEOUT_S = 60.0


class MeshError(Exception):
    """The mesh could not be brought up (the message says why and what to do)."""


@dataclass
class Mesh:
    """A running mesh, as a test sees it."""

    project_dir: Path
    config: Path
    admin: AdminClient  # .get/.post/.delete on the admin API, with the project's token
    proxy: str  # the proxy's listen address, "127.0.0.1:7080"
    domain: str
    started: bool  # whether this session started the agent (and so stops it at the end)
    _names: list[str] = field(default_factory=list)
    _urls: dict[str, str] = field(default_factory=dict)

    @property
    def admin_url(self) -> str:
        """`http://127.0.0.1:7070`: the admin API and dashboard."""
        return f"http://{self.admin.record.admin}"

    @property
    def proxy_url(self) -> str:
        """`http://127.0.0.1:7080`: the proxy itself (send your own `Host`)."""
        return f"http://{self.proxy}"

    @property
    def services(self) -> list[str]:
        """The names of the mesh's services (those only a peer offers included)."""
        return list(self._names)

    @property
    def urls(self) -> dict[str, str]:
        """Each service's URL through the proxy, by name."""
        return dict(self._urls)

    def url(self, service: str) -> str:
        """`http://api.localhost:7080`: where `service` answers through the proxy."""
        if service not in self._urls:
            self._urls = _urls(self.status())
        try:
            return self._urls[service]
        except KeyError:
            known = ", ".join(self._urls) or "none"
            raise KeyError(f"no service named {service!r} in the mesh (services: {known})") from None

    def status(self) -> dict[str, Any]:
        """The live status document (`GET /api/v1/status`, as `devmesh status --json`)."""
        document: dict[str, Any] = self.admin.get("/api/v1/status")
        return document


def _urls(status: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["url"] for entry in status["services"] if entry.get("url")}


class MeshSession:
    """Brings a project's mesh up once and down at the end, if (and only if) it started it."""

    def __init__(
        self,
        config: Path | None = None,
        *,
        search_from: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        may_start: bool = True,
        resolve_names: bool = True,
        set_environment: bool = True,
    ) -> None:
        self.config_hint = config  # -f; else $DEVMESH_CONFIG, else found walking up from search_from
        self.search_from = search_from
        self.timeout_s = timeout_s
        self.may_start = may_start  # False under pytest-xdist workers: they use a mesh started before
        self.resolve_names = resolve_names
        self.set_environment = set_environment
        self.mesh: Mesh | None = None
        self.config: Path | None = None
        self._started_pid: int | None = None
        self._undo: list[Callable[[], None]] = []

    def start(self) -> Mesh:
        """The running mesh; brings it up first if no agent runs (and then owns it)."""
        if self.mesh is not None:
            return self.mesh
        try:
            return self._start()
        except BaseException:
            self.stop()  # whatever went wrong, an agent started here does not outlive the session
            raise

    def _start(self) -> Mesh:
        from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
        from devmesh.agent.paths import StatePaths, read_agent_record, read_token
        from devmesh.config import ConfigError, find_config, load_config
        from devmesh.preflight.wait import wait_for_mesh

        try:
            self.config = find_config(self.search_from, explicit=self.config_hint)
            loaded = load_config(self.config)
        except ConfigError as error:
            raise MeshError(f"devmesh: the config has errors:\n{error}") from None
        paths = StatePaths(loaded.project_dir)
        deadline = time.monotonic() + self.timeout_s
        if read_agent_record(paths) is None:
            if not self.may_start:
                raise MeshError(
                    f"no devmesh agent runs for {loaded.project_dir}: under pytest-xdist, start the mesh "
                    "before the tests (`devmesh up --detach && devmesh wait --healthy`)"
                )
            self._up(loaded.path, deadline)
        result = wait_for_mesh(
            loaded.project_dir, healthy=True, timeout_s=max(deadline - time.monotonic(), 0.0)
        )
        if not result.ready:
            waiting = "; ".join(f"{name}: {why}" for name, why in result.waiting.items())
            raise MeshError(
                f"the mesh of {loaded.project_dir} was not healthy within {self.timeout_s:g}s"
                + (f" ({waiting})" if waiting else " (no agent answered)")
                + f"; see {paths.agent_log} and `devmesh logs`"
            )
        record = read_agent_record(paths)
        if record is None:
            raise MeshError(f"the devmesh agent of {loaded.project_dir} went away")
        admin = AdminClient(record, read_token(paths))
        try:
            status = admin.get("/api/v1/status")
        except (AgentNotRunning, AdminError) as error:
            raise MeshError(str(error)) from None
        proxy = status["agent"]["listen"] or ""
        self.mesh = Mesh(
            project_dir=loaded.project_dir,
            config=loaded.path,
            admin=admin,
            proxy=proxy,
            domain=loaded.config.mesh.domain,
            started=self._started_pid is not None,
            _names=[entry["name"] for entry in status["services"]],
            _urls=_urls(status),
        )
        if self.set_environment:
            self._export(status)
        if self.resolve_names and proxy:
            self._resolve(loaded.config.mesh.domain, proxy.rpartition(":")[0].strip("[]"))
        return self.mesh

    def stop(self) -> None:
        """Undo what start() did: the environment, name resolution, and the agent if it started it."""
        while self._undo:
            self._undo.pop()()
        self.mesh = None
        if self._started_pid is None or self.config is None:
            return
        pid, self._started_pid = self._started_pid, None
        import subprocess

        from devmesh.agent.paths import StatePaths, read_agent_record
        from devmesh.preflight.agents import devmesh_argv

        record = read_agent_record(StatePaths(self.config.parent))
        if record is None or record.pid != pid:
            return  # it stopped already, or another agent (not ours) replaced it
        try:
            subprocess.run(
                devmesh_argv(self.config, None, "down"),
                cwd=self.config.parent,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # `down` kills an agent that does not stop within its own timeout; if `down` itself is stuck,
            # kill the agent here: its guardian then stops the services it leaves.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _up(self, config: Path, deadline: float) -> None:
        from devmesh.preflight.agents import start_agent

        started = start_agent(config, None, deadline - time.monotonic())
        if started.pid is not None:
            self._started_pid = started.pid  # ours, even if not every service was healthy in time
        elif "already running" not in started.output:
            raise MeshError(
                f"`devmesh up --detach` in {config.parent} failed (exit {started.code}):\n{started.output[-3000:]}"
            )

    def _export(self, status: dict[str, Any]) -> None:
        """DEVMESH_<NAME>_URL and DEVMESH_PROXY_URL, as the mesh's own children get them."""
        values = {"DEVMESH_PROXY_URL": f"http://{status['agent']['listen']}"}
        for name, url in _urls(status).items():
            values[f"DEVMESH_{name.upper().replace('-', '_')}_URL"] = url
        for key, value in values.items():
            if key in os.environ:
                continue  # what the user set wins

            def unset(key: str = key) -> None:
                os.environ.pop(key, None)

            os.environ[key] = value
            self._undo.append(unset)

    def _resolve(self, domain: str, proxy_host: str) -> None:
        """Make `<anything>.<domain>` resolve to the proxy in this process when the system does not.

        `*.localhost` is loopback by RFC 6761, and browsers and curl resolve it so, but glibc without
        systemd-resolved does not: without this, `urllib.request.urlopen(mesh.url("api"))` would fail
        with "Name or service not known". Names the system resolves are left alone.
        """
        import socket

        original = socket.getaddrinfo
        suffix = "." + domain.lower().rstrip(".")

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return original(host, port, *args, **kwargs)
            except socket.gaierror:
                name = host.decode() if isinstance(host, bytes) else str(host)
                name = name.lower().rstrip(".")
                if name == suffix[1:] or name.endswith(suffix):
                    return original(proxy_host, port, *args, **kwargs)
                raise

        socket.getaddrinfo = getaddrinfo

        def restore() -> None:
            if socket.getaddrinfo is getaddrinfo:
                socket.getaddrinfo = original

        self._undo.append(restore)
