"""The agent's link to a hub (DESIGN §6): enrollment, the WebSocket session, revisions, peers.

Theory of operation. At start (`HubLink.open`) the agent reuses the credential kept in `.devmesh/hub.json`
for this hub, or exchanges its one-time enrollment token for one (a refusal stops `devmesh up`), and
applies the last good revision kept in `.devmesh/hub-revision.json`, so that it serves with it before the
hub answers, or when the hub is down. Then one task keeps a session open, for as long as the agent runs:

    connect (Bearer credential) -> hello -> welcome -> heartbeats, catalogs, revisions, peers
        ^                                                               |
        └──── backoff 0.5 s .. 30 s, with jitter <── connection lost ───┘

Each side numbers its messages from 1 per connection. What the hub must acknowledge (a catalog, a
revision's status) stays in an outbox until its ack arrives; a new connection sends the statuses again,
and its hello carries the current catalog. A revision is merged over the project's own config like the
last overlay and validated with the schema before anything changes: a valid one is applied through the
agent's reload and saved as the last good one; an invalid one is rejected with the error text, and the
agent keeps serving what it served. The other agents' mesh addresses (`peers`) are followed as a
`[peers] static` address is, so requests to their services go agent to agent over the mesh port.

Nothing here blocks the proxy: everything runs on the agent's loop, and the config is read and
validated in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from devmesh.agent.errors import AgentError
from devmesh.agent.hub_state import (
    HubCredential,
    HubRefused,
    HubUnreachable,
    SavedRevision,
    StateFileError,
    credential_file,
    enroll,
    forget_credential,
    normalize_hub_url,
    read_credential,
    read_saved_revision,
    revision_file,
    write_credential,
    write_saved_revision,
)
from devmesh.agent.paths import StatePaths
from devmesh.config.errors import ConfigError
from devmesh.config.revision import load_with_revision, revision_hash
from devmesh.config.units import Address, parse_address
from devmesh.mesh.snapshot import Health
from devmesh.tasks import stop_tasks

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from devmesh.config import LoadedConfig
    from devmesh.faults.book import FaultBook
    from devmesh.peers.follower import PeerFollower
    from devmesh.supervisor.logs import LogSink
    from devmesh.supervisor.manager import Supervisor

__all__ = ["HubLink", "HubOptions", "reconnect_delay"]

HUB_OPEN_TIMEOUT_S = 10.0  # the WebSocket handshake
HUB_WELCOME_TIMEOUT_S = 10.0  # from hello to the hub's welcome
HUB_CLOSE_TIMEOUT_S = 2.0  # the closing handshake, when the agent stops
HUB_RECONNECT_INITIAL_S = 0.5
HUB_RECONNECT_MAX_S = 30.0
HUB_CATALOG_DEBOUNCE_S = 0.25  # a burst of snapshot changes sends one catalog
HUB_HEARTBEAT_DEFAULT_S = 5.0  # when the welcome does not say
HUB_HEARTBEAT_BOUNDS_S = (0.2, 300.0)  # a welcome's heartbeat_s is kept within these
HUB_MESSAGE_MAX_BYTES = 4 * 1024 * 1024  # a revision document, a peers list
HUB_OUTBOX_MAX = 32  # revision statuses awaiting the hub's ack; older ones are dropped
CLOSE_UNAUTHORIZED = 4401  # the hub's close code for a bad or revoked credential

SESSION_PATH = "/hub/v1/agent/session"


@dataclass(frozen=True, slots=True)
class HubOptions:
    """`devmesh up --hub URL --hub-token TOKEN` (or `[peers] hub` and `hub_token`)."""

    url: str
    token: str | None = None


class HubAgent(Protocol):
    """What the link uses of the agent (`devmesh.agent.runtime.Agent`)."""

    loaded: LoadedConfig
    faults: FaultBook
    supervisor: Supervisor | None
    peers: PeerFollower | None
    mesh_address: Address | None
    config_error: str | None

    def offers(self, name: str) -> bool: ...

    async def reload(self, logs: LogSink) -> None: ...

    async def settle_dataplane(self) -> str | None: ...


def reconnect_delay(attempt: int, *, rand: Callable[[], float] = random.random) -> float:
    """The wait before connection attempt `attempt + 1`: doubling from 0.5 s to 30 s, each between
    half and all of its step (jitter, so that agents cut off together do not come back together)."""
    step = min(HUB_RECONNECT_MAX_S, HUB_RECONNECT_INITIAL_S * 2.0 ** min(attempt, 16))
    return max(HUB_RECONNECT_INITIAL_S, step * (0.5 + rand() / 2))


class HubLink:
    """One agent's session with its hub; `open()` makes it, `start()` runs it, `close()` ends it."""

    def __init__(
        self,
        agent: HubAgent,
        options: HubOptions,
        logs: LogSink,
        *,
        credential: HubCredential | None,
        applied: SavedRevision | None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._agent = agent
        self.url = normalize_hub_url(options.url)
        self._token = options.token
        self._logs = logs
        self._paths = StatePaths(agent.loaded.project_dir)
        # How the hub's lists show this agent: the machine, and the project.
        self.name = f"{socket.gethostname().split('.')[0]}/{agent.loaded.project_dir.name}"
        self.credential = credential
        self.applied = applied  # the revision in force (its document is merged over the config)
        # A revision being applied: reloads read it, but it is not `applied` (nor reported as such in
        # heartbeats and `status`) until the agent and its data plane serve it.
        self._pending: SavedRevision | None = None
        self._rand = rand
        self.connected = False
        self.error: str | None = None  # why the link is not connected, for `status`
        self.peer_list: list[dict[str, Any]] = []  # the hub's last `peers` message
        self._followed: set[str] = set()  # mesh addresses the hub made the agent follow
        self._ws: ClientConnection | None = None
        self._seq = 0
        self._awaiting: dict[int, tuple[str, Any]] = {}  # our seq -> (kind, what) until the hub acks it
        self._outbox: dict[str, dict[str, Any]] = {}  # revision -> revision_status not yet acknowledged
        self._sent_catalog: dict[str, Any] | None = None
        self._catalog_dirty = asyncio.Event()
        self._revisions: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._local_host: str | None = None  # this end of the session: the address that reaches the hub
        self._tasks: list[asyncio.Task[None]] = []
        self._seq_welcomed = False  # the last connection got as far as a welcome: the backoff restarts

    # -- start and stop ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, agent: HubAgent, options: HubOptions, logs: LogSink) -> HubLink:
        """Enrol when no credential is kept for this hub, and apply the last good revision.

        Raises:
            AgentError: the hub refused the enrollment token, or there is neither credential nor token.
        """
        paths = StatePaths(agent.loaded.project_dir)
        url = normalize_hub_url(options.url)
        credential: HubCredential | None = None
        try:
            credential = read_credential(paths, url)
        except StateFileError as error:
            logs.agent(f"warning: {error}; enrolling again", component="hub", level="warning")
        link = cls(agent, options, logs, credential=credential, applied=None)
        if credential is None:
            if not options.token:
                raise AgentError(
                    f"this agent is not enrolled with the hub {url} ({credential_file(paths)} has no "
                    "credential for it): get a token with `devmesh hub enroll WORKSPACE` and start with "
                    "`devmesh up --hub URL --hub-token TOKEN`"
                )
            try:
                await link._enroll()
            except HubRefused as refused:
                raise AgentError(_refused_token(url, refused)) from None
            except HubUnreachable as error:
                logs.agent(
                    f"hub {url} unreachable ({error}); starting without it, enrolling when it answers",
                    component="hub",
                    level="warning",
                    event="hub_unreachable",
                )
        await link._apply_saved()
        return link

    def start(self) -> None:
        """Run the session (and the revisions' applier) in the background until `close()`."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run()), loop.create_task(self._apply_revisions())]

    async def close(self) -> None:
        """End the session and the applier; never raises (the agent's shutdown goes on after it)."""
        await stop_tasks(
            self._tasks,
            lambda error: self._logs.agent(
                f"hub {self.url}: the link had failed: {error!r}", component="hub", level="error"
            ),
        )
        self._tasks = []
        self.connected = False

    @property
    def current(self) -> SavedRevision | None:
        """The revision the config is loaded with: one being applied, else the one in force."""
        return self._pending if self._pending is not None else self.applied

    def load_config(self) -> LoadedConfig:
        """The agent's reload seam: the project's files with the revision being applied (else the one in
        force) merged over them."""
        current = self.current
        return self._load(current.document if current is not None else None)

    def _load(self, document: dict[str, Any] | None) -> LoadedConfig:
        loaded = self._agent.loaded
        source = revision_file(self._paths)
        return load_with_revision(loaded.path, document, source=source, env_name=loaded.env_name)

    def services_changed(self) -> None:
        """A new snapshot: the catalog is compared (and sent if it changed) after a short debounce."""
        self._catalog_dirty.set()

    def status(self) -> dict[str, Any]:
        """The link as `devmesh status` shows it."""
        credential = self.credential
        return {
            "url": self.url,
            "connected": self.connected,
            "workspace": credential.workspace if credential else None,
            "agent_id": credential.agent_id if credential else None,
            "revision": self.applied.revision if self.applied else None,
            "peers": len(self.peer_list),
            "error": self.error,
        }

    async def _enroll(self) -> None:
        assert self._token is not None
        from devmesh import __version__

        self.credential = await asyncio.to_thread(
            enroll, self.url, self._token, name=self.name, hostname=socket.gethostname(), version=__version__
        )
        write_credential(self._paths, self.credential)
        self._logs.agent(
            f"enrolled with the hub {self.url} in workspace {self.credential.workspace!r} "
            f"as agent {self.credential.agent_id}",
            component="hub",
            event="hub_enrolled",
            workspace=self.credential.workspace,
        )

    async def _apply_saved(self) -> None:
        """The last good revision, before the hub answers: a hub that is down leaves the agent serving it."""
        try:
            saved = read_saved_revision(self._paths)
        except StateFileError as error:
            self._logs.agent(f"warning: {error}; starting without it", component="hub", level="warning")
            return
        if saved is None:
            return
        try:
            loaded = await asyncio.to_thread(self._load, saved.document)
        except ConfigError as error:
            self._logs.agent(
                f"warning: the saved hub revision {saved.revision[:12]} does not fit this config; "
                f"starting without it:\n{error}",
                component="hub",
                level="warning",
            )
            return
        self._agent.loaded = loaded
        self._agent.faults.load(loaded.config)
        self.applied = saved
        self._logs.agent(
            f"serving with the last good hub revision {saved.revision[:12]} until the hub answers",
            component="hub",
            event="hub_revision_restored",
            revision=saved.revision,
        )

    # -- the session ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        attempt = 0
        while True:
            try:
                if self.credential is None:
                    await self._enroll()
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except HubRefused as refused:  # enrolling in the background, after a start with the hub down
                self._stop(_refused_token(self.url, refused))
                return
            except InvalidStatus as error:
                if error.response.status_code in (401, 403):
                    self._refused_credential(
                        f"the hub refused the credential (HTTP {error.response.status_code})"
                    )
                    return
                self._lost(f"the hub answered the session with HTTP {error.response.status_code}")
            except ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code == CLOSE_UNAUTHORIZED:
                    self._refused_credential(
                        f"the hub closed the session: {closed.rcvd.reason or 'unauthorized'}"
                    )
                    return
                self._lost(
                    "connection lost"
                    + (f" ({closed.rcvd.reason})" if closed.rcvd and closed.rcvd.reason else "")
                )
            except (OSError, TimeoutError, InvalidHandshake, HubUnreachable) as error:
                self._lost(_describe(error))
            except _ProtocolError as error:
                self._lost(str(error))
            except Exception as error:  # anything else: the session is tried again, the task goes on
                self._lost(_error_text(error))
            else:
                self._lost("the hub closed the session")
            if self._seq_welcomed:
                attempt = 0
            delay = reconnect_delay(attempt, rand=self._rand)
            attempt += 1
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        from websockets.asyncio.client import connect

        assert self.credential is not None
        ws_url = "ws" + self.url.removeprefix("http") + SESSION_PATH
        self._seq_welcomed = False
        async with connect(
            ws_url,
            additional_headers={"Authorization": f"Bearer {self.credential.credential}"},
            open_timeout=HUB_OPEN_TIMEOUT_S,
            max_size=HUB_MESSAGE_MAX_BYTES,
            close_timeout=HUB_CLOSE_TIMEOUT_S,
            compression=None,
        ) as ws:
            self._seq, self._awaiting = 0, {}
            local = ws.local_address
            self._local_host = str(local[0]) if local else None
            try:
                await self._session(ws)
            finally:
                self._ws = None
                self.connected = False

    async def _session(self, ws: ClientConnection) -> None:
        assert self.credential is not None
        from devmesh import __version__

        catalog = self._catalog()
        await self._send(
            ws,
            "hello",
            agent_id=self.credential.agent_id,
            name=self.name,
            version=__version__,
            revision=self.applied.revision if self.applied else None,
            catalog=catalog,
        )
        async with asyncio.timeout(HUB_WELCOME_TIMEOUT_S):
            welcome = _parse(await ws.recv())
        if welcome.get("type") != "welcome":
            raise _ProtocolError(f"the hub answered hello with {welcome.get('type')!r}, not a welcome")
        low, high = HUB_HEARTBEAT_BOUNDS_S
        heartbeat_s = _number(welcome.get("heartbeat_s"), HUB_HEARTBEAT_DEFAULT_S)
        heartbeat_s = min(high, max(low, heartbeat_s))
        if isinstance(welcome.get("workspace"), str) and welcome["workspace"] != self.credential.workspace:
            self.credential = HubCredential(
                self.url, self.credential.agent_id, welcome["workspace"], self.credential.credential
            )
        self._sent_catalog = catalog
        self._seq_welcomed, self.connected, self.error = True, True, None
        self._logs.agent(
            f"connected to the hub {self.url} (workspace {self.credential.workspace!r})",
            component="hub",
            event="hub_connected",
        )
        self._ws = ws  # from now on a revision's status goes out at once; before, it waits in the outbox
        for status in list(self._outbox.values()):  # unacknowledged on the last connection
            await self._send_status(ws, status)
        loop = asyncio.get_running_loop()
        parts = [
            loop.create_task(self._read(ws)),
            loop.create_task(self._heartbeats(ws, heartbeat_s)),
            loop.create_task(self._catalogs(ws)),
        ]
        try:
            done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for part in parts:
                part.cancel()
            for part in parts:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await part
        for part in done:
            part.result()  # the reason the session ended (ConnectionClosed, a protocol error)

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            message = _parse(await ws.recv())
            kind = message.get("type")
            if kind == "ack":
                self._acknowledged(message.get("ack"))
            elif kind == "revision":
                self._revisions.put_nowait(message)
            elif kind == "peers":
                self._follow(message.get("peers"))
            elif kind == "error":
                self._logs.agent(
                    f"the hub says: {message.get('detail') or message.get('message')}",
                    component="hub",
                    level="warning",
                )
            # Anything else is from a newer hub: ignored, as a newer agent's extra fields are by the hub.

    async def _heartbeats(self, ws: ClientConnection, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self._send(ws, "heartbeat", revision=self.applied.revision if self.applied else None)
            self._catalog_dirty.set()  # a change no snapshot announced (a health flip) is caught here

    async def _catalogs(self, ws: ClientConnection) -> None:
        while True:
            await self._catalog_dirty.wait()
            await asyncio.sleep(HUB_CATALOG_DEBOUNCE_S)
            self._catalog_dirty.clear()
            catalog = self._catalog()
            if catalog != self._sent_catalog:
                seq = await self._send(ws, "catalog", catalog=catalog)
                self._awaiting[seq] = ("catalog", catalog)
                self._sent_catalog = catalog

    async def _send(self, ws: ClientConnection, kind: str, **fields: Any) -> int:
        self._seq += 1
        seq = self._seq
        await ws.send(json.dumps({"type": kind, "seq": seq, **fields}, separators=(",", ":")))
        return seq

    async def _send_status(self, ws: ClientConnection, status: dict[str, Any]) -> None:
        seq = await self._send(ws, "revision_status", **status)
        self._awaiting[seq] = ("revision_status", status["revision"])

    def _acknowledged(self, seq: object) -> None:
        if not isinstance(seq, int):
            return
        kind, what = self._awaiting.pop(seq, ("", None))
        if kind == "revision_status":
            self._outbox.pop(what, None)

    def _catalog(self) -> dict[str, Any]:
        """This agent's services as the hub aggregates them; the mesh address when it offers any."""
        agent = self._agent
        config = agent.loaded.config
        supervisor = agent.supervisor
        elsewhere = set(supervisor.elsewhere()) if supervisor is not None else set()
        views = supervisor.views(config.mesh.domain) if supervisor is not None else {}
        local = [
            view for name, view in sorted(views.items()) if name not in elsewhere and name in config.services
        ]
        services = [
            {
                "name": view.name,
                "version": view.version,
                "healthy": view.health == Health.HEALTHY,
                "hosts": list(view.hosts),
            }
            for view in local
        ]
        mesh: str | None = None
        address = agent.mesh_address
        if address is not None and any(agent.offers(view.name) for view in local):
            host = address.host
            if host in ("0.0.0.0", "::", "") and self._local_host is not None:
                host = self._local_host  # a wildcard bind: the address this machine reaches the hub from
            mesh = str(Address(host, address.port))
        return {"services": services, "mesh": mesh}

    # -- revisions -----------------------------------------------------------------------------------

    async def _apply_revisions(self) -> None:
        """One revision at a time, in the order the hub sent them; a reload may take a while (services
        stopped and started) and must not hold up the session's reading."""
        while True:
            message = await self._revisions.get()
            try:
                status = await self._apply(message)
            except Exception as error:  # _apply catches what an apply raises; this is a last resort
                revision = message.get("revision")
                if not isinstance(revision, str) or not revision:
                    continue
                status = self._rejected(revision, f"applying it failed: {_error_text(error)}")
            if status is None:
                continue
            self._outbox[status["revision"]] = status
            while len(self._outbox) > HUB_OUTBOX_MAX:
                self._outbox.pop(next(iter(self._outbox)))
            ws = self._ws
            if ws is not None:
                with contextlib.suppress(Exception):  # a lost connection: the next one sends it
                    await self._send_status(ws, status)

    async def _apply(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Validate and apply one `revision` message; the `revision_status` to report (None: no hash)."""
        revision, document = message.get("revision"), message.get("document")
        if not isinstance(revision, str) or not revision:
            self._logs.agent(
                "the hub sent a revision without its hash; ignored", component="hub", level="warning"
            )
            return None
        if not isinstance(document, dict):
            return self._rejected(revision, "the revision's document is not a JSON object")
        if revision_hash(document) != revision:
            return self._rejected(
                revision, "the document does not match its hash (sha256 of its canonical JSON)"
            )
        if self.applied is not None and self.applied.revision == revision:
            return {"revision": revision, "status": "applied", "details": None}
        agent = self._agent
        try:
            await asyncio.to_thread(self._load, document)
        except ConfigError as error:
            return self._rejected(revision, str(error))
        except Exception as error:  # a document the loader chokes on: rejected, nothing changed
            return self._rejected(revision, f"it cannot be loaded: {_error_text(error)}")
        saved = SavedRevision(revision, document)
        self._pending = saved  # reloads read it from now on; `applied` waits for the data plane
        failure: str | None = None
        restore = True  # whether the agent may now run something other than the revision in force
        try:
            await agent.reload(self._logs)  # through `load_config`: the files, then this revision
            if agent.config_error is not None:  # the files changed on disk meanwhile, and do not load:
                failure, restore = agent.config_error, False  # the agent kept its running config
            else:
                refused = await agent.settle_dataplane()
                if refused is not None:  # nginx refused the route table (and serves the previous one)
                    failure = f"the data plane refused it: {refused}"
                else:
                    write_saved_revision(self._paths, saved)
        except Exception as error:  # a reload, the data plane or the state file failed: back, and say so
            failure = f"applying it failed: {_error_text(error)}"
        self._pending = None
        if failure is not None:
            if restore:
                await self._restore()
            return self._rejected(revision, failure)
        self.applied = saved
        self._logs.agent(
            f"hub revision {revision[:12]} applied",
            component="hub",
            event="hub_revision_applied",
            revision=revision,
        )
        return {"revision": revision, "status": "applied", "details": None}

    async def _restore(self) -> None:
        """After a failed apply: the config and the data plane back to the revision in force. A failure
        here is logged; the agent serves what it can and the next revision or file change tries again."""
        agent = self._agent
        try:
            await agent.reload(self._logs)
            refused = await agent.settle_dataplane()
        except Exception as error:
            refused = _error_text(error)
        if refused is not None:
            self._logs.agent(
                f"hub: restoring the config in force after a failed revision: {refused}",
                component="hub",
                level="error",
            )

    def _rejected(self, revision: str, details: str) -> dict[str, Any]:
        details = details.replace(f"{self._paths.project_dir}/", "")  # the hub needs no local paths
        self._logs.agent(
            f"hub revision {revision[:12]} rejected; keeping the running config:\n{details}",
            component="hub",
            level="error",
            event="hub_revision_rejected",
            revision=revision,
        )
        return {"revision": revision, "status": "rejected", "details": details}

    # -- peers ---------------------------------------------------------------------------------------

    def _follow(self, entries: object) -> None:
        """Follow the mesh address of every agent the hub lists, as a `[peers] static` one; stop
        following those it no longer lists (a static address stays)."""
        if not isinstance(entries, list):
            return
        self.peer_list = [entry for entry in entries if isinstance(entry, dict)]
        wanted: dict[str, Address] = {}
        for entry in self.peer_list:
            mesh = entry.get("mesh")
            if not isinstance(mesh, str):
                continue
            try:
                address = parse_address(mesh)
            except ValueError:
                continue
            wanted[str(address)] = address
        follower = self._agent.peers
        if follower is None:
            return
        static = {str(address) for address in self._agent.loaded.config.peers.static}
        for key, address in wanted.items():
            if key not in self._followed:
                follower.add(address)
        for key in self._followed - set(wanted) - static:
            follower.remove(parse_address(key), "the hub no longer lists it")
        self._followed = set(wanted)

    # -- failures ------------------------------------------------------------------------------------

    def _lost(self, reason: str) -> None:
        if self.error != reason:
            self._logs.agent(
                f"hub {self.url}: {reason}; trying again (the agent serves on meanwhile)",
                component="hub",
                level="warning",
                event="hub_disconnected",
            )
        self.error = reason
        self.connected = False

    def _refused_credential(self, reason: str) -> None:
        forget_credential(self._paths)
        self.credential = None
        self._stop(
            f"{reason}; this agent's credential was revoked or the hub forgot it. Get a new token with "
            "`devmesh hub enroll WORKSPACE` and restart with `devmesh up --hub URL --hub-token TOKEN`"
        )

    def _stop(self, reason: str) -> None:
        self.error = reason
        self.connected = False
        self._logs.agent(
            f"hub {self.url}: {reason}; the link stays off (the agent serves on)",
            component="hub",
            level="error",
            event="hub_refused",
        )


class _ProtocolError(Exception):
    """The hub sent something the contract does not allow here."""


def _parse(frame: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(frame)
    except ValueError:
        raise _ProtocolError("the hub sent a frame that is not JSON") from None
    if not isinstance(message, dict):
        raise _ProtocolError("the hub sent a message that is not a JSON object")
    return message


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, OSError):
        return f"unreachable ({error.strerror or error})"
    return str(error) or type(error).__name__


def _refused_token(url: str, refused: HubRefused) -> str:
    return (
        f"the hub {url} refused the enrollment token: {refused}. An enrollment token works once: get a new "
        "one with `devmesh hub enroll WORKSPACE` and start again with `devmesh up --hub URL --hub-token TOKEN`"
    )
