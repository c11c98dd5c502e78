"""What the admin API asks of the agent (the `AgentControl` protocol in `devmesh.admin.app`): services
started, stopped and registered; pins; faults and scenarios; recent requests and their replay.

`AdminControls` is a mixin of `Agent`: it acts on the parts the agent owns (declared below) and
publishes a new snapshot through the agent when a change affects routing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from devmesh.faults.book import policy_summary

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig
    from devmesh.config.schema import HealthSection
    from devmesh.config.units import Address
    from devmesh.faults.book import FaultBook
    from devmesh.faults.policy import FaultPolicy
    from devmesh.mesh.snapshot import ServiceView
    from devmesh.observe.events import EventHub
    from devmesh.peers.follower import PeerFollower
    from devmesh.proxy.server import ProxyServer
    from devmesh.supervisor.logs import LogSink
    from devmesh.supervisor.manager import Supervisor


class AdminControls:
    """The admin API's verbs, over the agent's parts."""

    # The agent's parts (see `Agent.__init__`): None until the start-up step that makes them.
    loaded: LoadedConfig
    supervisor: Supervisor | None
    proxy: ProxyServer | None
    peers: PeerFollower | None
    listen_address: Address | None
    faults: FaultBook
    events: EventHub
    _pins: dict[str, str]
    _logs: LogSink | None

    if TYPE_CHECKING:  # the agent's own, defined in `Agent`

        def _views(self) -> dict[str, ServiceView]: ...

        def _publish(self) -> None: ...

    # -- services and registrations -------------------------------------------------------------------

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
        """The fault book's `on_change`: a new snapshot for the proxy, an event for the stream, a log line."""
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

    # -- recent requests -----------------------------------------------------------------------------

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
