"""The agent's lifecycle: start (guardian, admin API, services), run until a signal, shut down in order.

Start-up order matters for "no orphans": leftovers of an earlier agent are stopped first, the guardian
starts before the first child, and the agent record is written only once the admin API answers, so the
CLI never talks to a half-started agent. Shutdown runs the same steps backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import importlib
import ipaddress
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, TextIO

import psutil

from devmesh import const
from devmesh.agent.paths import (
    AgentRecord,
    StatePaths,
    read_agent_record,
    read_or_create_token,
    remove_agent_record,
    write_agent_record,
)
from devmesh.config import ConfigError, LoadedConfig, load_config
from devmesh.config.schema import HealthSection, MeshConfig
from devmesh.config.units import Address
from devmesh.faults.book import FaultBook, policy_summary
from devmesh.faults.policy import FaultPolicy
from devmesh.mesh.snapshot import Health, MeshSnapshot, MeshState, Origin, RunState, ServiceView
from devmesh.observe.events import Event, EventHub, TrafficSampler, service_events
from devmesh.supervisor.guardian import Guardian
from devmesh.supervisor.logs import LogLevelError, LogSink, parse_levels
from devmesh.supervisor.manager import Supervisor
from devmesh.supervisor.process import signal_group
from devmesh.supervisor.reaper import owner_marker, reap_project

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from devmesh.admin.models import ServiceStatus, StatusDocument
    from devmesh.health.remote import RemoteProber, RemoteTarget
    from devmesh.observe.tracing import RequestTracer
    from devmesh.peers.catalog import Catalog
    from devmesh.peers.follower import PeerFollower
    from devmesh.peers.mdns import MdnsDiscovery
    from devmesh.proxy.server import ProxyServer


class AgentError(Exception):
    """The agent cannot start; the message says why and what to do."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_tcp(address: Address, *, purpose: str, key: str) -> socket.socket:
    """A listening socket for `address`, or an AgentError naming the config key to change."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise AgentError(
            f"cannot listen on {address} for the {purpose}: {error.strerror or error} "
            f"(is another devmesh running? change {key} in devmesh.toml, or stop what holds the port)"
        ) from None
    sock.setblocking(False)
    return sock


class _EmbeddedUvicorn:
    """uvicorn on the agent's loop, without uvicorn's own signal handling (the agent owns signals)."""

    def __init__(self, app: object, sock: socket.socket) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # type: ignore[no-untyped-def]
                yield

        self._sock = sock
        self._server = Server(
            uvicorn.Config(
                app,  # type: ignore[arg-type]
                log_level="warning",
                lifespan="off",
                access_log=False,
                loop="none",
                ws="websockets-sansio",
                ws_ping_interval=None,  # loopback: a dead client shows as a closed socket
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise AgentError("the admin API stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, const.AGENT_STOP_TIMEOUT_S)
        self._sock.close()


class Agent:
    """One project's agent. `run()` returns the process exit code."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        services: Sequence[str] | None = None,
        terminal: TextIO | None = None,
        share: bool = False,
    ) -> None:
        self.loaded = loaded
        self._share_flag = share
        # This agent as peers know it: the host name and a random part, new on every start.
        self.peer_id = f"{socket.gethostname().split('.')[0]}-{secrets.token_hex(3)}"
        self.epoch = time.time()
        self.mesh_address: Address | None = None
        self.mesh_proxy: ProxyServer | None = None
        self.peers: PeerFollower | None = None
        self.discovery: MdnsDiscovery | None = None
        self._pins: dict[str, str] = {}
        self._mesh_tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = (
            None  # `devmesh route`: service -> local | remote | peer=ID
        )
        self.paths = StatePaths(loaded.project_dir)
        self._requested = list(services) if services else None
        self._terminal = terminal if terminal is not None else sys.stdout
        self._token = ""
        self._stop_event: asyncio.Event | None = None
        self._signals_seen = 0
        self.state = MeshState(loaded.mesh_name, loaded.config.mesh.domain)
        self.config_error: str | None = None
        self.supervisor: Supervisor | None = None
        self.admin_address: Address | None = None
        self.listen_address: Address | None = None
        self.https_address: Address | None = None
        self.proxy: ProxyServer | None = None
        self._publish_scheduled = False
        self.events = EventHub()
        self._sent_statuses: dict[str, dict[str, object]] = {}  # what the events stream last said
        self._live_peers: set[str] = set()
        self._traffic = TrafficSampler()
        self._metrics: CollectorRegistry | None = None
        self.tracer: RequestTracer | None = None
        self._logs: LogSink | None = None
        self.faults = FaultBook(on_change=self._faults_changed)
        self.faults.load(loaded.config)
        self.remotes: RemoteProber | None = None  # probes each service's `remote` (health, version)
        self._remote_said: dict[str, tuple[object, ...]] = {}  # what the log last said of each remote

    @property
    def token(self) -> str:
        return self._token

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        config = self.loaded.config
        self.paths.ensure()
        lock = self._lock()
        if self._requested:
            unknown = [name for name in self._requested if name not in config.services]
            if unknown:
                raise AgentError(
                    f"no service named {', '.join(map(repr, unknown))} in {self.loaded.path.name} "
                    f"(services: {', '.join(config.services) or 'none'})"
                )
        if not _is_loopback(config.proxy.admin.host):
            raise AgentError(
                f"[proxy] admin = {str(config.proxy.admin)!r} is not a loopback address; the admin API "
                "controls your processes and must stay on 127.0.0.1 or ::1"
            )
        started_at = time.monotonic()
        try:
            levels = parse_levels(os.environ.get("DEVMESH_LOG"))
        except LogLevelError as error:
            raise AgentError(str(error)) from None
        logs = LogSink(
            self.paths.log_dir,
            terminal=self._terminal,
            levels=levels,
            json_terminal=os.environ.get("DEVMESH_LOG_FORMAT", "").lower() == "json",
        )
        self._logs = logs
        for name in config.services:
            logs.register(name)  # the prefix column is as wide as the longest name from the first line
        reaped = await asyncio.to_thread(reap_project, self.loaded.project_dir)
        if reaped:
            logs.agent(f"stopped {reaped} process(es) left behind by an earlier devmesh agent")
        for warning in self.loaded.warnings:
            logs.agent(f"warning: {warning}")
        self._token = read_or_create_token(self.paths)
        admin_socket = bind_tcp(config.proxy.admin, purpose="admin API", key="[proxy] admin")
        host, port = admin_socket.getsockname()[:2]
        self.admin_address = Address(host, port)
        proxy_socket: socket.socket | None = None
        https_socket: socket.socket | None = None
        mesh_socket: socket.socket | None = None
        tls: ssl.SSLContext | None = None
        tls_note: str | None = None
        # Every port and certificate before any service starts: a busy port or a bad file fails `up`
        # with nothing half-started. Served once the first services are on their way; until then the
        # kernel queues connections, losing none.
        try:
            proxy_socket = bind_tcp(config.proxy.listen, purpose="proxy", key="[proxy] listen")
            if config.proxy.https is not None:
                https_socket = bind_tcp(config.proxy.https, purpose="HTTPS proxy", key="[proxy] https")
                tls, tls_note = await asyncio.to_thread(self._tls_context)
            if config.proxy.mesh_tls is not None:
                from devmesh.peers.tls import MeshTLSError, mesh_contexts

                try:
                    self._mesh_tls = mesh_contexts(self.loaded.project_dir, config.proxy.mesh_tls)
                except MeshTLSError as error:
                    raise AgentError(str(error)) from None
            if self._sharing() or config.peers.static:
                mesh_socket = bind_tcp(config.proxy.mesh, purpose="mesh port", key="[proxy] mesh")
            if config.observe.otlp is not None:
                from devmesh.observe.tracing import TracingUnavailable, load_tracer

                try:
                    self.tracer = load_tracer(
                        str(config.observe.otlp), mesh=self.loaded.mesh_name, peer_id=self.peer_id
                    )
                except TracingUnavailable as error:
                    raise AgentError(str(error)) from None
        except AgentError:
            for sock in (admin_socket, proxy_socket, https_socket, mesh_socket):
                if sock is not None:
                    sock.close()
            raise
        self.listen_address = Address(*proxy_socket.getsockname()[:2])
        if https_socket is not None:
            self.https_address = Address(*https_socket.getsockname()[:2])
        if mesh_socket is not None:
            self.mesh_address = Address(*mesh_socket.getsockname()[:2])
        if tls_note is not None:
            logs.agent(tls_note)
        proxied = f"http://{self.listen_address}" + (
            f" and https://{self.https_address}" if self.https_address else ""
        )
        logs.agent(
            f"proxy on {proxied}: services at http://<name>.{config.mesh.domain}:{self.listen_address.port}"
        )
        marker = owner_marker(self.loaded.project_dir, os.getpid())
        guardian = await Guardian.start(marker)
        self.supervisor = Supervisor(
            config,
            project_dir=self.loaded.project_dir,
            owner=marker,
            logs=logs,
            on_change=self._schedule_publish,
            base_env=self._child_env(config),
        )
        admin: _EmbeddedUvicorn | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            # Services first. The admin API's imports (FastAPI, ~0.5 s of CPU) would compete with the
            # children's own start-up on a small machine: they wait until the services are healthy,
            # or ADMIN_START_DELAY_MAX_S at most.
            order = self.supervisor.up(self._requested)
            self._publish()
            await asyncio.sleep(0)  # the runners spawn the first services...
            await self._start_proxy(proxy_socket, https_socket, tls)  # ...while the proxy's code loads
            await self._start_mesh(mesh_socket, logs)
            self._start_remote_probes()
            ready = loop.create_task(self._announce_ready(order, started_at, logs))
            tasks.append(ready)
            stopping = loop.create_task(self._stop_event.wait())
            await asyncio.wait(
                {ready, stopping}, timeout=const.ADMIN_START_DELAY_MAX_S, return_when=asyncio.FIRST_COMPLETED
            )
            stopping.cancel()
            admin_module = await asyncio.to_thread(importlib.import_module, "devmesh.admin.app")
            admin = _EmbeddedUvicorn(admin_module.create_admin_app(self), admin_socket)
            await admin.start()
            # Everything imported so far lives as long as the agent: keep it out of the collector's
            # full passes, which would otherwise walk ~100k objects of FastAPI and pydantic in the
            # middle of proxied requests.
            gc.collect()
            gc.freeze()
            gc.enable()
            write_agent_record(
                self.paths,
                AgentRecord(
                    pid=os.getpid(),
                    create_time=psutil.Process().create_time(),
                    admin=str(self.admin_address),
                    listen=str(self.listen_address) if self.listen_address else None,
                    config=str(self.loaded.path),
                ),
            )
            logs.agent(
                f"admin API and dashboard on http://{self.admin_address} (mesh {self.loaded.mesh_name!r}); "
                "`devmesh dashboard` opens it",
                event="admin_started",
                address=str(self.admin_address),
            )
            tasks.append(loop.create_task(self._watch_config(logs)))
            tasks.append(loop.create_task(self._sample_traffic()))
            await self._stop_event.wait()
            logs.agent("stopping services...")
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.remotes is not None:
                await self.remotes.close()
            if self.discovery is not None:
                await self.discovery.close()  # the goodbye first: peers drop this agent at once
            if self.peers is not None:
                await self.peers.close()
            if self.mesh_proxy is not None:
                await self.mesh_proxy.close()
            elif mesh_socket is not None:
                mesh_socket.close()
            self.faults.close()
            await self.supervisor.down()
            if self.proxy is not None:
                await self.proxy.close()
                if self.tracer is not None:
                    await asyncio.to_thread(self.tracer.close)
            else:
                for sock in (proxy_socket, https_socket):
                    if sock is not None:
                        sock.close()
            if admin is not None:
                await admin.stop()
            else:
                admin_socket.close()
            await guardian.close()
            remove_agent_record(self.paths, os.getpid())
            logs.agent("stopped")
            logs.close()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            lock.close()
        return 0

    def _lock(self) -> IO[bytes]:
        """Hold `.devmesh/agent.lock` for the agent's life: a second agent for the project fails at once.

        The kernel releases the lock when the process ends, however it ends.
        """
        handle = (self.paths.root / "agent.lock").open("a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            running = read_agent_record(self.paths)
            pid = f" (pid {running.pid})" if running else ""
            raise AgentError(
                f"devmesh is already running for {self.loaded.project_dir}{pid}; "
                "use `devmesh status`, or `devmesh down` to stop it"
            ) from None
        return handle

    def _on_signal(self, signum: int) -> None:
        self._signals_seen += 1
        if self._stop_event is not None:
            self._stop_event.set()
        if self._signals_seen >= 2 and signum == signal.SIGINT:
            # A second Ctrl-C: the user will not wait for graceful stops.
            self._kill_all_now()

    def _kill_all_now(self) -> None:
        if self.supervisor is None:
            return
        for runner in self.supervisor.runners.values():
            if runner.pid is not None:
                signal_group(runner.pid, signal.SIGKILL)

    async def _announce_ready(self, order: list[str], started_at: float, logs: LogSink) -> None:
        assert self.supervisor is not None
        runners = [self.supervisor.runners[name] for name in order]
        await asyncio.gather(*(runner.wait_healthy() for runner in runners))
        elapsed = time.monotonic() - started_at
        logs.agent(f"ready: {len(runners)} service(s) healthy in {elapsed:.2f}s")
        for entry in self.status().services:
            if entry.name in order and entry.url:
                logs.agent(f"  {entry.name:<16} {entry.url}")

    async def _watch_config(self, logs: LogSink) -> None:
        """Reload when a config file, an overlay or `.env` beside it changes.

        Polled on the loop (a scandir of one folder every CONFIG_POLL_INTERVAL_S), not watched by a
        watchfiles thread: that thread takes the GIL back every few milliseconds, and each time the
        proxy's requests in flight wait for it.
        """
        project_dir = self.loaded.project_dir
        seen = _config_signature(project_dir)
        while True:
            await asyncio.sleep(const.CONFIG_POLL_INTERVAL_S)
            current = _config_signature(project_dir)
            if current == seen:
                continue
            # Wait for the editor to finish writing (several files, or a write in pieces).
            while True:
                await asyncio.sleep(const.CONFIG_POLL_INTERVAL_S)
                settled = _config_signature(project_dir)
                if settled == current:
                    break
                current = settled
            seen = current
            await self.reload(logs)

    async def reload(self, logs: LogSink) -> None:
        """Apply the config on disk; an invalid one is reported and the running config kept."""
        assert self.supervisor is not None
        try:
            loaded = await asyncio.to_thread(load_config, self.loaded.path, env_name=self.loaded.env_name)
        except ConfigError as error:
            self.config_error = str(error)
            logs.agent(
                f"config error; keeping the running config:\n{error}",
                component="config",
                level="error",
                event="config_error",
            )
            self.events.publish(
                {"type": "agent", "time": time.time(), "event": "config_error", "message": str(error)}
            )
            self._publish()
            return
        self.config_error = None
        previous = self.loaded.config
        self.loaded = loaded
        live_mesh = {"version_policy"}  # read on every snapshot: applies at once
        mesh_changed = {
            key
            for key in type(previous.mesh).model_fields
            if getattr(previous.mesh, key) != getattr(loaded.config.mesh, key)
        }
        if loaded.config.proxy != previous.proxy or mesh_changed - live_mesh:
            logs.agent("[mesh] and [proxy] changes take effect after `devmesh down` and `devmesh up`")
        self.faults.load(loaded.config)
        summary = await self.supervisor.apply(loaded.config)
        if self.remotes is not None:
            self.remotes.update(self._remote_targets())
            for name in loaded.config.services:
                self._follow_remote(name)  # runners made anew by the reload learn what is known
        logs.agent(f"config reloaded: {summary}", component="config", event="config_reloaded")
        self.events.publish(
            {"type": "agent", "time": time.time(), "event": "config_reloaded", "message": summary}
        )
        self._publish()

    # -- state ---------------------------------------------------------------------------------------

    def _schedule_publish(self) -> None:
        if self._publish_scheduled:
            return
        self._publish_scheduled = True
        asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._publish_scheduled = False
        if self.supervisor is None:
            return
        previous = self.state.snapshot
        published = self.state.publish(
            self._views(),
            mesh=self.loaded.mesh_name,
            domain=self.loaded.config.mesh.domain,
            config_error=self.config_error,
            faults=self.faults.by_service(),
        )
        if self.proxy is not None and self.peers is not None:
            # Peers that left: requests in flight to them move to the next endpoint now, rather than
            # waiting out the proxy timeout on a connection nobody will answer.
            for key in _peer_keys(previous) - _peer_keys(published):
                self.proxy.pool.drop(key)
        if self.peers is not None:
            live = {state.catalog.peer for state in self.peers.live() if state.catalog is not None}
            if live != self._live_peers:
                now = time.time()
                entries = self._peer_entries()
                for peer in sorted(live - self._live_peers):
                    self.events.publish(
                        {"type": "peer", "time": now, "event": "joined", "peer": peer, "peers": entries}
                    )
                for peer in sorted(self._live_peers - live):
                    self.events.publish(
                        {"type": "peer", "time": now, "event": "left", "peer": peer, "peers": entries}
                    )
                self._live_peers = live
        if self.events.subscribers:
            self._send_service_changes()

    def _send_service_changes(self) -> None:
        """A `service` event for each service whose status differs from what the stream last said."""
        current = {entry.name: entry.model_dump() for entry in self.status().services}
        revision = self.state.snapshot.revision
        for event in service_events(self._sent_statuses, current, time.time()):
            event["revision"] = revision  # the snapshot it describes, as in status's agent.revision
            self.events.publish(event)
        self._sent_statuses = current

    def hello(self) -> Event:
        """The first message of the events stream: everything a dashboard draws, as of now."""
        if self.events.subscribers:
            self._send_service_changes()  # the others hear of what changed since the last snapshot
        status = self.status()
        self._sent_statuses = {entry.name: entry.model_dump() for entry in status.services}
        log = self.proxy.access_log if self.proxy is not None else None
        recent = list(log.recent)[-const.EVENTS_HELLO_REQUESTS :] if log is not None else []
        return {
            "type": "hello",
            "time": time.time(),
            "status": status.model_dump(),
            "requests": [record.summary() for record in recent],
            "traffic": list(self.events.traffic_history),
        }

    async def _sample_traffic(self) -> None:
        """Once a second: what each service served, for the dashboard's charts (pushed, never polled)."""
        while True:
            await asyncio.sleep(const.TRAFFIC_SAMPLE_INTERVAL_S)
            if self.proxy is None or self.proxy.access_log is None:
                continue
            sample = self._traffic.sample(self.proxy.stats, self.proxy.access_log.recent, time.time())
            sample["faults_injected"] = dict(self.proxy.stats.faults)  # totals, by fault name
            self.events.traffic_history.append(
                {key: value for key, value in sample.items() if key != "requests"}
            )
            if self.events.subscribers:
                self.events.publish(sample)

    def metrics(self) -> bytes:
        """`/metrics`: Prometheus text, from the agent's own registry (built on the first scrape)."""
        from devmesh.observe.metrics import MeshSources, metrics_registry, render

        if self._metrics is None:
            self._metrics = metrics_registry(
                MeshSources(
                    snapshot=lambda: self.state.snapshot,
                    proxy_stats=lambda: self.proxy.stats if self.proxy is not None else None,
                    mesh_stats=lambda: self.mesh_proxy.stats if self.mesh_proxy is not None else None,
                    live_peers=lambda: len(self.peers.live()) if self.peers is not None else 0,
                    mesh_refused=lambda: (
                        self.mesh_proxy.mesh.refused if self.mesh_proxy and self.mesh_proxy.mesh else 0
                    ),
                    faults_injected=lambda: self.proxy.stats.faults if self.proxy is not None else {},
                    peer_id=self.peer_id,
                )
            )
        return render(self._metrics)

    def _views(self) -> dict[str, ServiceView]:
        """The supervisor's services, with the endpoints peers offer merged in and the pins applied."""
        if self.supervisor is None:
            return {}
        views = self.supervisor.views(self.loaded.config.mesh.domain)
        live = self._live_catalogs()
        if self.peers is not None:
            from devmesh.peers.merge import merge_peers

            views = merge_peers(
                views,
                live,
                version_policy=self.loaded.config.mesh.version_policy,
                tls=self.loaded.config.proxy.mesh_tls is not None,
            )
        from dataclasses import replace

        from devmesh.routing.remote import add_remote, mirror_endpoint
        from devmesh.routing.table import apply_pin

        config = self.loaded.config
        statuses = self.remotes.statuses if self.remotes is not None else {}
        for name, view in list(views.items()):
            if view.remote:
                views[name] = add_remote(view, statuses.get(name), version_policy=config.mesh.version_policy)
            spec = config.services.get(name)
            if spec is not None and spec.mirror is not None:
                views[name] = replace(
                    views[name],
                    mirror=mirror_endpoint(name, spec.mirror, live, tls=config.proxy.mesh_tls is not None),
                )
        partitioned = self.faults.partitioned()
        if partitioned:
            # A partition scenario: this agent behaves as if it could not reach those peers.
            for name, view in list(views.items()):
                kept = tuple(e for e in view.endpoints if e.peer_id not in partitioned)
                if len(kept) != len(view.endpoints):
                    view = views[name] = replace(
                        view, endpoints=kept, detail=view.detail or "peer partitioned by a scenario"
                    )
                if view.mirror is not None and view.mirror.peer_id in partitioned:
                    views[name] = replace(view, mirror=replace(view.mirror, healthy=False))
        for name, pin in self._pins.items():
            pinned = views.get(name)
            if pinned is not None:
                kept = tuple(apply_pin(list(pinned.endpoints), pin))
                detail = (
                    pinned.detail if kept else f"pinned to {pin} (`devmesh route {name} --clear` to undo)"
                )
                views[name] = replace(pinned, endpoints=kept, detail=detail)
        return views

    def _live_catalogs(self) -> list[tuple[Address, Catalog]]:
        """The live peers' catalogs, closest first: the order their endpoints are tried in (round robin
        among the healthy ones)."""
        if self.peers is None:
            return []
        nearest = sorted(self.peers.live(), key=lambda state: state.latency_s)
        return [(s.address, s.catalog) for s in nearest if s.catalog is not None]

    # -- the remote fallback's probes ------------------------------------------------------------------

    def _remote_targets(self) -> dict[str, RemoteTarget]:
        """Each service's remote, and the path to ask it for (its `health.http`, else `/`)."""
        from devmesh.health.remote import RemoteTarget

        return {
            name: RemoteTarget(spec.remote, spec.health.http if spec.health and spec.health.http else "/")
            for name, spec in self.loaded.config.services.items()
            if spec.remote is not None
        }

    def _start_remote_probes(self) -> None:
        """Probe every remote in the background while the agent runs (`health.remote`)."""
        from devmesh.health.remote import RemoteProber

        assert self.proxy is not None
        self.remotes = RemoteProber(tls_context=self.proxy.pool.tls_context, on_change=self._remote_changed)
        self.remotes.update(self._remote_targets())

    def _remote_changed(self, name: str) -> None:
        """A probe changed what is known of `name`'s remote: say so (once per change), tell a remote-only
        service's runner, and publish a snapshot with the remote's new health and version."""
        self._log_remote(name)
        self._follow_remote(name)
        self._schedule_publish()

    def _follow_remote(self, name: str) -> None:
        from devmesh.routing.remote import remote_health

        spec = self.loaded.config.services.get(name)
        if self.supervisor is None or spec is None or self.remotes is None:
            return
        usable, detail = remote_health(
            self.remotes.statuses.get(name), spec.requires, self.loaded.config.mesh.version_policy
        )
        self.supervisor.follow_remote(name, usable, detail)

    def _log_remote(self, name: str) -> None:
        from devmesh.routing.remote import version_accepted

        spec = self.loaded.config.services.get(name)
        status = self.remotes.statuses.get(name) if self.remotes is not None else None
        if spec is None or spec.remote is None or status is None or self._logs is None:
            return
        policy = self.loaded.config.mesh.version_policy
        outside = not version_accepted(status.version, spec.requires)
        said = (
            status.healthy,
            status.reason if not status.healthy else None,
            outside,
            status.version,
            policy,
        )
        if self._remote_said.get(name) == said:
            return
        previous = self._remote_said.get(name)
        self._remote_said[name] = said
        remote = spec.remote
        if not status.healthy:
            self._logs.agent(
                f"{name}: its remote {remote} is not usable: {status.reason}",
                component="health",
                level="warning",
                event="remote_unhealthy",
                service=name,
                remote=remote,
                reason=status.reason,
            )
        elif previous is not None and not previous[0]:
            self._logs.agent(
                f"{name}: its remote {remote} answers again",
                component="health",
                event="remote_healthy",
                service=name,
                remote=remote,
            )
        if outside and status.healthy:
            used = 'used anyway (version_policy = "warn")' if policy == "warn" else "not used"
            self._logs.agent(
                f"{name}: its remote {remote} announces {status.version}, outside requires "
                f"{spec.requires!r}; {used}",
                component="health",
                level="warning",
                event="remote_version_mismatch",
                service=name,
                remote=remote,
                version=status.version,
                requires=spec.requires,
                policy=policy,
            )

    def recent_requests(
        self,
        *,
        service: str | None = None,
        status: str | None = None,
        trace_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, object]]:
        """Recent proxied requests, newest last, filtered: `status` is a code (`502`) or a class (`5xx`)."""
        log = self.proxy.access_log if self.proxy is not None else None
        if log is None:
            return []
        matches = status_filter(status)
        found: list[dict[str, object]] = []
        for record in reversed(log.recent):
            if len(found) >= limit:
                break
            if service and record.service != service:
                continue
            if trace_id and trace_id not in (record.trace_id, record.traceparent[3:35]):
                continue
            if matches is not None and not matches(record.status):
                continue
            found.append(record.summary(headers=True))
        found.reverse()
        return found

    def recent_request(self, request_id: int) -> dict[str, object] | None:
        log = self.proxy.access_log if self.proxy is not None else None
        record = log.find(request_id) if log is not None else None
        return record.summary(headers=True) if record is not None else None

    async def replay(self, request_id: int) -> dict[str, object]:
        """Send a recorded request again, through this agent's proxy, with its original headers."""
        from devmesh.agent.replay import replay_request
        from devmesh.supervisor.manager import SupervisorError

        log = self.proxy.access_log if self.proxy is not None else None
        record = log.find(request_id) if log is not None else None
        if record is None or self.listen_address is None:
            raise SupervisorError(
                f"no recent request {request_id} (the agent keeps the last {self.loaded.config.observe.requests_kept}; "
                "see `GET /api/v1/requests`)",
                status=404,
            )
        result = await replay_request(record, self.listen_address)
        # The proxy recorded the replay as a new request: find it by its trace id, newest first.
        result["id"] = None
        assert log is not None
        for entry in reversed(log.recent):
            if entry.trace_id == result["trace_id"]:
                result["id"] = entry.id
                break
        return result

    # -- faults and scenarios ------------------------------------------------------------------------

    def fault_list(self) -> list[dict[str, object]]:
        injected = self.proxy.stats.faults if self.proxy is not None else {}
        return [policy_summary(policy, injected.get(policy.name, 0)) for policy in self.faults.policies()]

    def add_fault(self, policy: FaultPolicy) -> None:
        self.faults.add(policy)

    def remove_fault(self, name: str) -> None:
        self.faults.remove(name)

    def set_fault_enabled(self, name: str, enabled: bool) -> None:
        self.faults.set_enabled(name, enabled)

    def clear_faults(self) -> None:
        self.faults.clear()

    def scenario_list(self) -> list[dict[str, object]]:
        return self.faults.available()

    def run_scenario(self, name: str, duration_s: float | None) -> dict[str, object]:
        peers = {s.catalog.peer for s in self.peers.peers if s.catalog is not None} if self.peers else set()
        run = self.faults.run(
            name,
            duration_s=duration_s,
            loop=asyncio.get_running_loop(),
            services=set(self._views()),
            peers=peers,
        )
        return run.summary()

    def stop_scenario(self, name: str) -> None:
        self.faults.stop(name)

    def _faults_changed(self, event: str, details: dict[str, object]) -> None:
        """A fault or scenario changed: a new snapshot for the proxy, an event for the stream."""
        if self.supervisor is not None:
            self._publish()
        kind = "scenario" if event.startswith("scenario_") else "fault"
        self.events.publish(
            {
                "type": kind,
                "time": time.time(),
                "event": event.removeprefix("scenario_"),
                **details,
                "faults": self.fault_list(),
                "scenarios": self.faults.scenarios(),
            }
        )
        if self._logs is not None:
            subject = details.get("scenario") or details.get("fault") or "all faults"
            self._logs.agent(
                f"{kind} {subject}: {event.removeprefix('scenario_')}",
                component="proxy",
                event=f"{kind}_{event.removeprefix('scenario_')}",
                details=details,
            )

    # -- pins (`devmesh route`) -----------------------------------------------------------------------

    @property
    def pins(self) -> dict[str, str]:
        return dict(self._pins)

    def pin(self, name: str, pin: str) -> None:
        from devmesh.routing.table import parse_pin
        from devmesh.supervisor.manager import SupervisorError

        parsed = parse_pin(pin)
        if parsed is None:
            raise SupervisorError("a pin is local, remote or peer=ID")
        if name not in self._views():
            raise SupervisorError(f"no service named {name!r} (here or at a peer)", status=404)
        self._pins[name] = parsed
        self.events.publish({"type": "route", "time": time.time(), "service": name, "pin": parsed})
        self._publish()

    def unpin(self, name: str) -> None:
        if self._pins.pop(name, None) is not None:
            self.events.publish({"type": "route", "time": time.time(), "service": name, "pin": None})
        self._publish()

    def status(self) -> StatusDocument:
        from devmesh.admin.models import AgentInfo, StatusDocument

        views = self._views()
        return StatusDocument(
            mesh=self.loaded.mesh_name,
            agent=AgentInfo(
                pid=os.getpid(),
                peer_id=self.peer_id,
                config=str(self.loaded.path),
                files=[str(path) for path in self.loaded.files],
                admin=str(self.admin_address),
                listen=str(self.listen_address) if self.listen_address else None,
                https=str(self.https_address) if self.https_address else None,
                mesh=str(self.mesh_address) if self.mesh_address else None,
                mesh_refused=self.mesh_proxy.mesh.refused if self.mesh_proxy and self.mesh_proxy.mesh else 0,
                config_error=self.config_error,
                revision=self.state.snapshot.revision,
            ),
            services=[self._service_status(view) for view in views.values()],
            peers=self._peer_entries(),
            faults=self.fault_list(),
            scenarios=self.faults.scenarios(),
        )

    def _peer_entries(self) -> list[dict[str, object]]:
        return [
            {
                "peer": state.peer,
                "address": str(state.address),
                "alive": state.catalog is not None,
                "latency_ms": round(state.latency_s * 1000, 2),
                "services": [
                    {"name": s.name, "version": s.version, "healthy": s.healthy}
                    for s in (state.catalog.services if state.catalog else [])
                ],
                "error": state.error,
            }
            for state in (self.peers.peers if self.peers is not None else [])
        ]

    def _service_status(self, view: ServiceView) -> ServiceStatus:
        from devmesh.admin.models import EndpointStatus, ServiceStatus

        url = self.service_url(view)
        spec = self.loaded.config.services.get(view.name)
        return ServiceStatus(
            name=view.name,
            origin=view.origin.value,
            state=view.state.value,
            health=view.health.value,
            pid=view.pid,
            port=view.port,
            url=url,
            version=view.version,
            hosts=list(view.hosts),
            restarts=view.restarts,
            detail=view.detail if view.health != Health.HEALTHY else None,
            depends_on=list(spec.depends_on) if spec is not None else [],
            requires=view.requires,
            remote=view.remote,
            pin=self._pins.get(view.name),
            endpoints=[
                EndpointStatus(
                    address=endpoint.authority,
                    origin=endpoint.origin.value,
                    peer=endpoint.peer_id,
                    version=endpoint.version,
                    healthy=endpoint.healthy,
                )
                for endpoint in view.endpoints
            ],
        )

    def service_url(self, view: ServiceView) -> str | None:
        """`http://api.localhost:7080`: where a browser reaches the service through the proxy."""
        if self.listen_address is None:
            return f"http://127.0.0.1:{view.port}" if view.port is not None else None
        domain = self.loaded.config.mesh.domain
        suffix = "." + domain
        port = self.listen_address.port
        authority_port = "" if port == 80 else f":{port}"
        for host in view.hosts:
            if not host.startswith("*."):
                full = host if host.endswith(suffix) or host == domain else host + suffix
                return f"http://{full}{authority_port}"
        if view.routes:
            prefix = view.routes[0].rstrip("*")
            return f"http://{domain}{authority_port}{prefix}"
        return None

    def _access_log_path(self) -> Path | None:
        """`[observe] access_log_path`: `.devmesh/logs/access.log` by default, "-" for the terminal."""
        configured = self.loaded.config.observe.access_log_path
        if configured == "-":
            return None
        if configured is None:
            return self.paths.log_dir / "access.log"
        return self.loaded.project_dir / Path(configured).expanduser()

    async def _start_proxy(
        self, sock: socket.socket, https_socket: socket.socket | None, tls: ssl.SSLContext | None
    ) -> None:
        from devmesh.proxy.observe import AccessLog
        from devmesh.proxy.server import ProxyServer

        config = self.loaded.config
        self.proxy = ProxyServer(
            self.state,
            timeout_s=config.proxy.timeout,
            retries=config.proxy.retries,
            peer_id=self.peer_id,
            peer_key=self._mesh_key(),
            allow_fault_header=config.proxy.allow_fault_header,
            access_log=AccessLog(
                self._access_log_path(),
                config.proxy.access_log,
                kept=config.observe.requests_kept,
                echo=self._logs.access
                if self._logs is not None and config.observe.access_log_path == "-"
                else None,
                sink=self.tracer,
            ),
        )
        if self._mesh_tls is not None:
            self.proxy.pool.peer_tls = self._mesh_tls[1]  # requests to peers show this agent's certificate
        await self.proxy.start(sock)
        if https_socket is not None:
            await self.proxy.start(https_socket, tls=tls)

    # -- peers ---------------------------------------------------------------------------------------

    def _sharing(self) -> bool:
        return self.loaded.config.mesh.share or self._share_flag

    def offers(self, name: str) -> bool:
        """Whether this agent offers `name` to its peers (`share` per service, default [mesh] share)."""
        spec = self.loaded.config.services.get(name)
        if spec is None or (spec.command is None and spec.port is None):
            return False  # only what runs here; never a peer's service passed on
        return spec.share if spec.share is not None else self._sharing()

    def _mesh_key(self) -> bytes | None:
        from devmesh.peers.signing import mesh_key

        secret = self.loaded.config.mesh.secret
        return mesh_key(self.loaded.mesh_name, secret) if secret else None

    def catalog_json(self) -> bytes:
        from devmesh.peers.catalog import Catalog, OfferedService
        from devmesh.peers.signing import mesh_hash

        views = self.supervisor.views(self.loaded.config.mesh.domain) if self.supervisor else {}
        offered = [
            OfferedService(view.name, view.version, view.health == Health.HEALTHY)
            for view in views.values()
            if self.offers(view.name)
        ]
        return Catalog(
            peer=self.peer_id,
            mesh=mesh_hash(self.loaded.mesh_name, self.loaded.config.mesh.secret),
            epoch=self.epoch,
            revision=self.state.snapshot.revision,
            services=offered,
        ).to_json()

    def _mdns(self) -> bool:
        """mDNS runs for a team mesh (a secret set, or services shared), never for a project alone:
        without either, nothing devmesh does leaves loopback."""
        config = self.loaded.config
        return config.peers.discovery == "mdns" and bool(config.mesh.secret or self._sharing())

    async def _start_mesh(self, sock: socket.socket | None, logs: LogSink) -> None:
        """Serve the mesh port (when there is one) and follow peers (static, and found by mDNS)."""
        from devmesh.peers.follower import PeerFollower
        from devmesh.peers.policy import MeshPolicy
        from devmesh.peers.signing import Verifier, mesh_hash

        config = self.loaded.config
        key = self._mesh_key()
        if sock is not None:
            from devmesh.proxy.server import ProxyServer

            if key is None and self._sharing():
                logs.agent(
                    "warning: this mesh is shared without a secret: anyone who can reach "
                    f"{self.mesh_address} can call the services it offers (set [mesh] secret)"
                )
            policy = MeshPolicy(
                Verifier(key) if key is not None else None, catalog=self.catalog_json, offers=self.offers
            )
            self.mesh_proxy = ProxyServer(
                self.state, timeout_s=config.proxy.timeout, retries=config.proxy.retries, mesh=policy
            )
            await self.mesh_proxy.start(sock, tls=self._mesh_tls[0] if self._mesh_tls else None)
            offered = [name for name in config.services if self.offers(name)]
            logs.agent(
                f"mesh port on {self.mesh_address} as peer {self.peer_id}"
                + (f", offering {', '.join(offered)}" if offered else ", offering nothing")
            )
        if not (config.peers.static or self._mdns()):
            return
        digest = mesh_hash(self.loaded.mesh_name, config.mesh.secret)
        self.peers = PeerFollower(
            list(config.peers.static),
            key=key,
            peer_id=self.peer_id,
            mesh_hash=digest,
            on_change=self._schedule_publish,
            log=logs.agent,
            tls=self._mesh_tls[1] if self._mesh_tls else None,
        )
        self.peers.start()
        if self._mdns():
            from devmesh.peers.mdns import MdnsDiscovery

            self.discovery = MdnsDiscovery(
                peer_id=self.peer_id,
                mesh_hash=digest,
                epoch=self.epoch,
                announce=self.mesh_address if self._sharing() else None,
                interfaces=list(config.peers.interfaces),
                follower=self.peers,
                log=logs.agent,
            )
            try:
                await self.discovery.start()
            except OSError as error:
                logs.agent(f"mDNS discovery is off: {error.strerror or error} (check [peers] interfaces)")
                self.discovery = None

    def _child_env(self, config: MeshConfig) -> dict[str, str]:
        """The agent's environment, plus where each service is reached through the proxy:
        `DEVMESH_PROXY_URL` and `DEVMESH_<SERVICE>_URL` (as docker compose gives service names)."""
        env = dict(os.environ)
        assert self.listen_address is not None
        env["DEVMESH_PROXY_URL"] = f"http://{self.listen_address}"
        for name, spec in config.services.items():
            hosts = tuple(spec.hosts) if spec.hosts is not None else (name,)
            view = ServiceView(
                name, Origin.LOCAL, RunState.STOPPED, Health.UNKNOWN, hosts, tuple(spec.routes)
            )
            url = self.service_url(view)
            if url is not None:
                env[f"DEVMESH_{name.upper().replace('-', '_')}_URL"] = url
        return env

    def _tls_context(self) -> tuple[ssl.SSLContext, str | None]:
        """The HTTPS listener's context, with certificates for the mesh's names issued on demand by
        devmesh's local CA (created on first use); and a note for the terminal if it was just created."""
        from devmesh.tls import CAError, LocalCA

        try:
            ca, created = LocalCA.load_or_create()
        except CAError as error:
            raise AgentError(f"[proxy] https is set, but {error}") from None
        domain = self.loaded.config.mesh.domain
        suffix = "." + domain
        context = ca.server_context(
            [domain, "localhost", "127.0.0.1", "::1"],
            accept_name=lambda name: name == domain or name.endswith(suffix),
        )
        note = f"created a local certificate authority in {ca.directory}; run `devmesh trust` to trust it"
        return context, note if created else None

    # -- control (the admin API calls these) ---------------------------------------------------------

    async def start_service(self, name: str) -> list[str]:
        assert self.supervisor is not None
        return await self.supervisor.start_service(name)

    async def stop_service(self, name: str) -> None:
        assert self.supervisor is not None
        await self.supervisor.stop_service(name)

    async def restart_service(self, name: str) -> None:
        assert self.supervisor is not None
        await self.supervisor.restart_service(name)

    def register(self, name: str, *, port: int, version: str | None, health: HealthSection | None) -> None:
        assert self.supervisor is not None
        self.supervisor.register(name, port=port, version=version, health=health)

    async def unregister(self, name: str) -> None:
        assert self.supervisor is not None
        await self.supervisor.unregister(name)


def _peer_keys(snapshot: MeshSnapshot) -> set[tuple[str, int]]:
    return {
        (endpoint.host, endpoint.port)
        for view in snapshot.services.values()
        for endpoint in view.endpoints
        if endpoint.origin is Origin.PEER
    }


def _config_signature(project_dir: Path) -> dict[str, tuple[int, int, int]]:
    """(mtime, size, inode) of each config file, overlay and `.env` in the project folder: file times
    are coarse (a few ms), and an editor that saves by renaming changes the inode."""
    signature: dict[str, tuple[int, int, int]] = {}
    try:
        entries = list(os.scandir(project_dir))
    except OSError:
        return signature
    for entry in entries:
        name = entry.name
        if name == ".env" or (name.startswith("devmesh.") and name.endswith((".toml", ".yaml", ".yml"))):
            with contextlib.suppress(OSError):
                stat = entry.stat()
                signature[name] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    return signature


def run_agent(loaded: LoadedConfig, *, services: Sequence[str] | None = None, share: bool = False) -> int:
    """Run an agent in the foreground on uvloop (where available) until a signal stops it."""
    agent = Agent(loaded, services=services, share=share)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is not built for every platform
        runner = asyncio.Runner()
    with runner:
        return runner.run(agent.run())


def status_filter(status: str | None) -> Callable[[int], bool] | None:
    """`502` matches that code, `5xx` the class; None or "" matches all. A bad filter matches nothing."""
    if not status:
        return None
    text = status.strip().lower()
    if len(text) == 3 and text.endswith("xx") and text[0].isdigit():
        low = int(text[0]) * 100
        return lambda code: low <= code < low + 100
    if text.isdigit():
        wanted = int(text)
        return lambda code: code == wanted
    return lambda code: False
