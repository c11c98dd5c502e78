"""The agent's lifecycle: start (guardian, admin API, services), run until a signal, shut down in order.

Start-up order matters for "no orphans": leftovers of an earlier agent are stopped first, the guardian
starts before the first child, and the agent record is written only once the admin API answers, so the
CLI never talks to a half-started agent. Shutdown runs the same steps backwards.

The agent owns the parts and publishes the snapshot; the rest of `devmesh.agent` is what it is made of:
`listeners` (ports, the admin API's uvicorn, TLS contexts), `views` (what each snapshot publishes),
`observing` (the events stream and `/metrics`), `remotes` (the remote fallback's probes), `peering` (the
mesh port and the peers followed), `control` (what the admin API calls) and `config_watch` (the reload's
trigger).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import importlib
import inspect
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, TextIO

import psutil

from devmesh import const
from devmesh.agent.config_watch import watch_config
from devmesh.agent.control import AdminControls
from devmesh.agent.discovered import DiscoveryFeeds
from devmesh.agent.errors import AgentError
from devmesh.agent.listeners import EmbeddedUvicorn, bind_tcp, https_context, is_loopback, mesh_tls_contexts
from devmesh.agent.observing import StreamFeed, metrics_registry_of
from devmesh.agent.paths import (
    AgentRecord,
    StatePaths,
    read_agent_record,
    read_or_create_token,
    remove_agent_record,
    write_agent_record,
)
from devmesh.agent.peering import MeshPeering
from devmesh.agent.remotes import RemoteWatch
from devmesh.agent.views import (
    live_catalogs,
    peer_entries,
    peer_keys,
    peer_source,
    published_views,
    service_status,
    service_url,
)
from devmesh.config import ConfigError, LoadedConfig, load_config
from devmesh.config.schema import MeshConfig
from devmesh.config.units import Address
from devmesh.faults.book import FaultBook
from devmesh.mesh.snapshot import Health, MeshState, Origin, RunState, ServiceView
from devmesh.observe.events import Event, EventHub
from devmesh.plugins.hooks import AgentInfo, PluginHooks
from devmesh.supervisor.guardian import Guardian
from devmesh.supervisor.logs import LogLevelError, LogSink, parse_levels
from devmesh.supervisor.manager import Supervisor
from devmesh.supervisor.process import signal_group
from devmesh.supervisor.reaper import owner_marker, reap_project

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from devmesh.admin.app import AgentControl
    from devmesh.admin.models import StatusDocument
    from devmesh.agent.hub_link import HubLink, HubOptions
    from devmesh.dataplane.sync import DataplaneSync
    from devmesh.export.model import RouteModel
    from devmesh.observe.tracing import RequestTracer
    from devmesh.peers.follower import PeerFollower
    from devmesh.peers.mdns import MdnsDiscovery
    from devmesh.proxy.server import ProxyServer

__all__ = ["Agent", "AgentError", "run_agent"]


class Agent(AdminControls, MeshPeering):
    """One project's agent. `run()` returns the process exit code."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        services: Sequence[str] | None = None,
        terminal: TextIO | None = None,
        share: bool = False,
        reload_config: Callable[[], LoadedConfig] | None = None,
        hub: HubOptions | None = None,
        engine: str | None = None,
    ) -> None:
        self.loaded = loaded
        self._engine = engine  # `up --engine`; None: [engine] kind
        # How a config change on disk is read again: load_config on the same files, unless the config
        # is made of more than devmesh's files (`compose up` maps a compose file in memory).
        self._reload_config = reload_config or (
            lambda: load_config(self.loaded.path, env_name=self.loaded.env_name)
        )
        self._share_flag = share
        # This agent as peers know it: the host name and a random part, new on every start.
        self.peer_id = f"{socket.gethostname().split('.')[0]}-{secrets.token_hex(3)}"
        self.epoch = time.time()
        self.mesh_address: Address | None = None
        self.mesh_proxy: ProxyServer | None = None
        self.peers: PeerFollower | None = None
        self.discovery: MdnsDiscovery | None = None
        self._pins: dict[str, str] = {}  # `devmesh route`: service -> local | remote | peer=ID
        self._mesh_tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None
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
        self.stream = StreamFeed(self.events)  # what the events stream last said
        self._metrics: CollectorRegistry | None = None
        self.tracer: RequestTracer | None = None
        self._logs: LogSink | None = None
        self.faults = FaultBook(on_change=self._faults_changed)
        self.faults.load(loaded.config)
        self.remotes: RemoteWatch | None = None  # probes each service's `remote` (health, version)
        self.discovered: DiscoveryFeeds | None = None  # [discovery]: Docker containers, Kubernetes Services
        self._mesh_started: float | None = None  # monotonic time the peers began to be followed
        self.plugins: PluginHooks | None = None  # hook plugins (entry points in devmesh.plugins)
        self._hub_options = hub
        self.hub_link: HubLink | None = None  # `up --hub` / [peers] hub: enrollment, session, revisions
        self.dataplane: DataplaneSync | None = None  # `--engine nginx`: nginx serves the route table
        self._settling_dataplane = False  # a hub revision's apply is under way (it reports its own result)

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
        if not is_loopback(config.proxy.admin.host):
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
        if self._hub_options is not None:
            from devmesh.agent.hub_link import HubLink

            # Enrols (a refused token stops `up` here) and applies the last good revision, so the first
            # services start with it; the reloads read the files with the revision in force over them.
            self.hub_link = await HubLink.open(self, self._hub_options, logs)
            self._reload_config = self.hub_link.load_config
            config = self.loaded.config
        for name in config.services:
            logs.register(name)  # the prefix column is as wide as the longest name from the first line
        reaped = await asyncio.to_thread(reap_project, self.loaded.project_dir)
        if reaped:
            logs.agent(f"stopped {reaped} process(es) left behind by an earlier devmesh agent")
        for warning in self.loaded.warnings:
            logs.agent(f"warning: {warning}")
        self.plugins = await asyncio.to_thread(PluginHooks.load, logs)  # imports the plugins' code
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
        engine = self._engine or config.engine.kind
        try:
            if engine == "nginx" and config.proxy.https is not None:
                raise AgentError(
                    "[proxy] https: the nginx engine serves plain HTTP only; remove `https` or use the "
                    "builtin engine (`devmesh up --engine builtin`)"
                )
            proxy_socket = bind_tcp(config.proxy.listen, purpose="proxy", key="[proxy] listen")
            if config.proxy.https is not None:
                https_socket = bind_tcp(config.proxy.https, purpose="HTTPS proxy", key="[proxy] https")
                tls, tls_note = await asyncio.to_thread(https_context, config.mesh.domain)
            if config.proxy.mesh_tls is not None:
                self._mesh_tls = mesh_tls_contexts(self.loaded.project_dir, config.proxy.mesh_tls)
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
        if engine == "nginx":
            # nginx binds [proxy] listen itself: the socket only proved the port free (and chose it
            # for port 0); it is closed just before nginx starts.
            proxy_socket.close()
            proxy_socket = None
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
        admin: EmbeddedUvicorn | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            # Services first. The admin API's imports (FastAPI, ~0.5 s of CPU) would compete with the
            # children's own start-up on a small machine: they wait until the services are healthy,
            # or ADMIN_START_DELAY_MAX_S at most.
            order = self.supervisor.up(self._requested)
            self._publish()
            await asyncio.sleep(0)  # the runners spawn the first services...
            if proxy_socket is not None:
                await self._start_proxy(proxy_socket, https_socket, tls)  # ...while the proxy's code loads
            else:
                await self._start_dataplane(config, logs)
            await self._start_mesh(mesh_socket, logs)
            self._mesh_started = time.monotonic()
            self._follow_peers()
            if self.peers is not None:
                tasks.append(loop.create_task(self._keep_following_peers()))
            if self.hub_link is not None:
                self.hub_link.start()
            self._start_remote_probes(logs)
            self.discovered = DiscoveryFeeds(supervisor=self.supervisor, logs=logs)
            self.discovered.configure(config.discovery)
            ready = loop.create_task(self._announce_ready(order, started_at, logs))
            tasks.append(ready)
            stopping = loop.create_task(self._stop_event.wait())
            await asyncio.wait(
                {ready, stopping}, timeout=const.ADMIN_START_DELAY_MAX_S, return_when=asyncio.FIRST_COMPLETED
            )
            stopping.cancel()
            admin_module = await asyncio.to_thread(importlib.import_module, "devmesh.admin.app")
            create_admin_app: Callable[[AgentControl], object] = admin_module.create_admin_app
            admin = EmbeddedUvicorn(create_admin_app(self), admin_socket)  # mypy: an Agent is an AgentControl
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
            self.plugins.start(
                AgentInfo(
                    mesh=self.loaded.mesh_name,
                    project_dir=self.loaded.project_dir,
                    config_file=self.loaded.path,
                    peer_id=self.peer_id,
                    admin_url=f"http://{self.admin_address}",
                    proxy_url=f"http://{self.listen_address}" if self.listen_address else None,
                    services=tuple(config.services),
                ),
                self.events,
            )
            tasks.append(
                loop.create_task(
                    watch_config(
                        self.loaded.project_dir,
                        lambda: self.reload(logs),
                        also=[
                            path.name for path in self.loaded.files if path.parent == self.loaded.project_dir
                        ],
                    )
                )
            )
            tasks.append(loop.create_task(self.stream.sample_traffic(lambda: self.proxy)))
            await self._stop_event.wait()
            logs.agent("stopping services...")
        finally:
            # Every step runs even when one before it fails (it is logged): a hub link or a plugin that
            # raises must not leave nginx or the services running.
            step = self._shutdown_step
            if self.hub_link is not None:
                await step("the hub link", self.hub_link.close, logs)
            await step("the plugins", self.plugins.stop, logs)  # on_agent_stopping while services run
            for task in tasks:
                task.cancel()
                await step("a background task", _awaiter(task), logs)
            if self.remotes is not None:
                await step("the remote probes", self.remotes.close, logs)
            if self.discovered is not None:
                await step("discovery feeds", self.discovered.close, logs)
            if self.discovery is not None:
                await step("mDNS", self.discovery.close, logs)  # the goodbye first: peers drop us at once
            if self.peers is not None:
                await step("the peers", self.peers.close, logs)
            if self.mesh_proxy is not None:
                await step("the mesh port", self.mesh_proxy.close, logs)
            elif mesh_socket is not None:
                mesh_socket.close()
            await step("the faults", self.faults.close, logs)
            if self.dataplane is not None:
                await step("nginx", self.dataplane.close, logs)
            await step("the services", self.supervisor.down, logs)
            if self.proxy is not None:
                await step("the proxy", self.proxy.close, logs)
                if self.tracer is not None:
                    await step("the tracer", _in_thread(self.tracer.close), logs)
            else:
                for sock in (proxy_socket, https_socket):
                    if sock is not None:
                        sock.close()
            if admin is not None:
                await step("the admin API", admin.stop, logs)
            else:
                admin_socket.close()
            await step("the guardian", guardian.close, logs)
            remove_agent_record(self.paths, os.getpid())
            logs.agent("stopped")
            logs.close()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            lock.close()
        return 0

    @staticmethod
    async def _shutdown_step(what: str, stop: Callable[[], object], logs: LogSink) -> None:
        """One step of the shutdown: awaited if it is a coroutine; a failure is logged, not raised."""
        try:
            result = stop()
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            logs.agent(f"stopping {what} failed: {error!r}", level="error", event="shutdown_failed")

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

    async def reload(self, logs: LogSink) -> None:
        """Apply the config on disk; an invalid one is reported and the running config kept."""
        assert self.supervisor is not None
        try:
            loaded = await asyncio.to_thread(self._reload_config)
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
            self.remotes.reload()  # runners made anew by the reload learn what is known of their remote
        if self.discovered is not None:
            self.discovered.configure(loaded.config.discovery)
        logs.agent(f"config reloaded: {summary}", component="config", event="config_reloaded")
        self.events.publish(
            {"type": "agent", "time": time.time(), "event": "config_reloaded", "message": summary}
        )
        self._publish()

    # -- publishing ----------------------------------------------------------------------------------

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
        views = self._views()
        published = self.state.publish(
            views,
            mesh=self.loaded.mesh_name,
            domain=self.loaded.config.mesh.domain,
            config_error=self.config_error,
            faults=self.faults.by_service(),
        )
        if self.proxy is not None and self.peers is not None:
            # Peers that left: requests in flight to them move to the next endpoint now, rather than
            # waiting out the proxy timeout on a connection nobody will answer.
            for key in peer_keys(previous) - peer_keys(published):
                self.proxy.pool.drop(key)
        if self.peers is not None:
            live = {state.catalog.peer for state in self.peers.live() if state.catalog is not None}
            self.stream.peers_seen(live, self._peer_entries)
        if self.events.subscribers:
            self._send_service_changes()
        if self.hub_link is not None:
            self.hub_link.services_changed()
        if self.dataplane is not None:
            self.dataplane.changed()
        self._follow_peers(views)

    def _follow_peers(self, views: dict[str, ServiceView] | None = None) -> None:
        """Tell each service served elsewhere (no command, no port) what the peers say of it, from the
        published `views`. A change of its state publishes again; the same verdict does not."""
        if self.supervisor is None or self._mesh_started is None:
            return
        names = self.supervisor.elsewhere()
        if not names:
            return
        if self.peers is None:
            for name in names:
                self.supervisor.follow_peers(name, None)
            return
        views = views if views is not None else self._views()
        # mDNS may still find a peer: for a moment after start, "none found" is not an answer yet.
        searching = self.discovery is not None and time.monotonic() - self._mesh_started < const.PEER_EXPIRE_S
        for name in names:
            self.supervisor.follow_peers(
                name, peer_source(views.get(name), self.peers.peers, searching=searching)
            )

    async def _keep_following_peers(self) -> None:
        """A peer's first failure, or the end of the mDNS search, publishes nothing by itself: look again
        at every poll."""
        while True:
            await asyncio.sleep(const.PEER_POLL_INTERVAL_S)
            self._follow_peers()

    def _views(self) -> dict[str, ServiceView]:
        """The supervisor's services as published: peers merged in, remotes, mirrors, partitions, pins."""
        if self.supervisor is None:
            return {}
        config = self.loaded.config
        return published_views(
            self.supervisor.views(config.mesh.domain),
            config,
            peers=live_catalogs(self.peers.live()) if self.peers is not None else None,
            remotes=self.remotes.statuses if self.remotes is not None else {},
            partitioned=self.faults.partitioned(),
            pins=self._pins,
        )

    def _send_service_changes(self) -> None:
        self.stream.services_seen(self.status().services, self.state.snapshot.revision)

    def hello(self) -> Event:
        """The first message of the events stream: everything a dashboard draws, as of now."""
        if self.events.subscribers:
            self._send_service_changes()  # the others hear of what changed since the last snapshot
        return self.stream.hello(self.status(), self.proxy.access_log if self.proxy is not None else None)

    def metrics(self) -> bytes:
        """`/metrics`: Prometheus text, from the agent's own registry (built on the first scrape)."""
        from devmesh.observe.metrics import render

        if self._metrics is None:
            self._metrics = metrics_registry_of(self)
        return render(self._metrics)

    def status(self) -> StatusDocument:
        from devmesh.admin.models import AgentInfo, StatusDocument

        views = self._views()
        config = self.loaded.config
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
                hub=self.hub_link.status() if self.hub_link is not None else None,
            ),
            services=[
                service_status(
                    view,
                    spec=config.services.get(view.name),
                    pin=self._pins.get(view.name),
                    url=service_url(view, listen=self.listen_address, domain=config.mesh.domain),
                )
                for view in views.values()
            ],
            peers=self._peer_entries(),
            faults=self.fault_list(),
            scenarios=self.faults.scenarios(),
        )

    def _peer_entries(self) -> list[dict[str, object]]:
        return peer_entries(self.peers.peers if self.peers is not None else [])

    # -- the parts, as start-up makes them -----------------------------------------------------------

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

    async def _start_dataplane(self, config: MeshConfig, logs: LogSink) -> None:
        """`--engine nginx`: nginx serves [proxy] listen with the route table, applied on every change."""
        from devmesh.dataplane.engine import NginxEngine
        from devmesh.dataplane.results import ApplyResult, EngineError
        from devmesh.dataplane.sync import DataplaneSync
        from devmesh.export.model import from_status

        assert self.listen_address is not None

        def build() -> tuple[RouteModel, str]:
            services = [entry.model_dump(mode="json") for entry in self.status().services]
            model = from_status(services, self.loaded.config, mesh_name=self.loaded.mesh_name)
            # A label for logs and the status only: the engine reloads when the rendered table changes,
            # not when this id does (it changes with every snapshot).
            hub = self.hub_link.current if self.hub_link is not None else None
            local = f"local-{self.state.snapshot.revision}"
            return model, f"hub-{hub.revision[:12]}-{local}" if hub is not None else local

        def on_result(result: ApplyResult) -> None:
            """A refusal of a table that changed here (services, health, peers; not a new revision, whose
            refusal the hub link reports) while a hub revision is in force: said plainly, as the hub
            still shows that revision as applied."""
            link = self.hub_link
            applied = link.applied if link is not None else None
            if result.status != "rejected" or self._settling_dataplane or applied is None:
                return
            if link is not None and link.current is not applied:  # a revision being applied: its own
                return
            serving = result.live_revision_id or "nothing"
            logs.agent(
                f"nginx refused the route table after a change on this agent, with hub revision "
                f"{applied.revision[:12]} in force (the revision itself was applied); {serving} serves",
                component="nginx",
                level="error",
                event="dataplane_rejected",
                revision=applied.revision,
            )

        try:
            engine = NginxEngine.for_project(
                self.loaded.project_dir,
                config,
                (self.listen_address.host, self.listen_address.port),
                access_log=str(self.paths.log_dir / "nginx-access.log"),
            )
            self.dataplane = DataplaneSync(
                engine,
                build=build,
                log=lambda message: logs.agent(message, component="nginx"),
                on_result=on_result,  # drift needs no more than the sync's own log: it is repaired
            )
            first = await self.dataplane.start()
        except EngineError as error:
            raise AgentError(str(error)) from None
        if not first.ok:
            raise AgentError(f"nginx refused the first config: {first.details}")
        for note in engine.notes:
            logs.agent(f"warning: {note}", component="nginx", level="warning")

    async def settle_dataplane(self) -> str | None:
        """Apply the route table to the data plane now (after a hub revision was loaded): None when it
        serves it, else why it was refused (the previous config still serves)."""
        if self.dataplane is None:
            return None
        self._settling_dataplane = True
        try:
            result = await self.dataplane.apply_now()
        finally:
            self._settling_dataplane = False
        return None if result.ok else (result.details or result.summary())

    def _start_remote_probes(self, logs: LogSink) -> None:
        """Probe every remote in the background while the agent runs (`health.remote`)."""
        assert self.supervisor is not None
        self.remotes = RemoteWatch(
            config=lambda: self.loaded.config,
            supervisor=self.supervisor,
            logs=logs,
            # With the nginx engine there is no builtin proxy (nor its pool's TLS): the system's trust.
            tls_context=self.proxy.pool.tls_context if self.proxy is not None else ssl.create_default_context,
            on_change=self._schedule_publish,
        )
        self.remotes.start()

    def _child_env(self, config: MeshConfig) -> dict[str, str]:
        """The agent's environment, plus where each service is reached through the proxy:
        `DEVMESH_PROXY_URL`, `DEVMESH_DOMAIN` and `DEVMESH_<SERVICE>_URL` (as docker compose gives
        service names)."""
        env = dict(os.environ)
        assert self.listen_address is not None
        env["DEVMESH_PROXY_URL"] = f"http://{self.listen_address}"
        env["DEVMESH_DOMAIN"] = config.mesh.domain
        for name, spec in config.services.items():
            hosts = tuple(spec.hosts) if spec.hosts is not None else (name,)
            view = ServiceView(
                name, Origin.LOCAL, RunState.STOPPED, Health.UNKNOWN, hosts, tuple(spec.routes)
            )
            url = service_url(view, listen=self.listen_address, domain=config.mesh.domain)
            if url is not None:
                env[f"DEVMESH_{name.upper().replace('-', '_')}_URL"] = url
        return env


def _awaiter(task: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    """Awaiting a cancelled background task: its cancellation is what was asked for."""

    async def wait() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return wait


def _in_thread(work: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        return await asyncio.to_thread(work)

    return run


def run_agent(
    loaded: LoadedConfig,
    *,
    services: Sequence[str] | None = None,
    share: bool = False,
    reload_config: Callable[[], LoadedConfig] | None = None,
    hub: HubOptions | None = None,
    engine: str | None = None,
) -> int:
    """Run an agent in the foreground on uvloop (where available) until a signal stops it."""
    agent = Agent(loaded, services=services, share=share, reload_config=reload_config, hub=hub, engine=engine)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is not built for every platform
        runner = asyncio.Runner()
    with runner:
        return runner.run(agent.run())
