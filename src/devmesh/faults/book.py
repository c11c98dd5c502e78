"""The faults in force on this agent, and the chaos scenarios running: the agent owns them and their timers.

Three sources: `[faults.NAME]` in the config (switched on and off at run time without editing the file),
faults added at run time (`devmesh fault add`, the admin API, the dashboard), and scenarios, which turn a
set of faults, outages or a partition from a peer on for a bounded time. A scenario's end is a timer in
the agent, so it ends on time whatever happens to the CLI that started it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from devmesh.config.schema import FaultSection, MeshConfig
from devmesh.config.units import DurationRange
from devmesh.faults.policy import FaultPolicy

BUILTIN_DURATION_S = 60.0
SLOW_DELAY = DurationRange(0.3, 1.5)
FLAKY_RATE = 0.3

# Scenarios usable without writing config: `devmesh chaos run slow:payments`.
BUILTINS = {
    "slow": "every request to SERVICE waits 300 ms to 1.5 s",
    "flaky": f"{FLAKY_RATE:.0%} of the requests to SERVICE get a 503",
    "down": "SERVICE answers 503 to every request, as if it were gone",
    "reset": "every connection to SERVICE is reset",
    "partition": "this agent stops reaching PEER, as if the network between them were cut",
}


class FaultError(Exception):
    """A fault or scenario request that cannot be carried out; `status` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def policy_from_section(name: str, section: FaultSection, *, source: str = "config") -> FaultPolicy:
    return FaultPolicy(
        name=name,
        service=section.service,
        delay=section.delay,
        abort=section.abort,
        outage=section.outage,
        bandwidth=section.bandwidth,
        rate=section.rate,
        paths=tuple(section.paths),
        methods=frozenset(section.methods),
        headers=tuple(sorted((key.lower(), value) for key, value in section.headers.items())),
        enabled=section.enabled,
        source=source,
    )


@dataclass
class ScenarioRun:
    name: str
    faults: list[FaultPolicy]
    partitioned: frozenset[str]  # peer ids
    started_at: float
    ends_at: float
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "started_at": self.started_at,
            "ends_at": self.ends_at,
            "remaining_s": round(max(0.0, self.ends_at - time.time()), 3),
            "faults": [policy.name for policy in self.faults],
            "partitioned": sorted(self.partitioned),
        }


class FaultBook:
    def __init__(self, *, on_change: Callable[[str, dict[str, object]], None]) -> None:
        self._on_change = on_change  # (event, details): the agent republishes and tells the stream
        self._config: dict[str, FaultPolicy] = {}
        self._switched: dict[str, bool] = {}  # config faults switched on or off at run time
        self._runtime: dict[str, FaultPolicy] = {}
        self._scenarios: dict[str, ScenarioRun] = {}
        self._scenario_config: dict[str, tuple[list[str], list[str], float | None]] = {}

    # -- the config ----------------------------------------------------------------------------------

    def load(self, config: MeshConfig) -> None:
        self._config = {name: policy_from_section(name, section) for name, section in config.faults.items()}
        self._switched = {name: on for name, on in self._switched.items() if name in self._config}
        self._scenario_config = {
            name: (list(section.faults), list(section.outage), section.duration)
            for name, section in config.scenarios.items()
        }

    # -- what is in force ----------------------------------------------------------------------------

    def policies(self) -> list[FaultPolicy]:
        """Every fault, switched on or off, as the admin API lists them."""
        found = [
            replace(policy, enabled=self._switched.get(name, policy.enabled))
            for name, policy in self._config.items()
        ]
        found.extend(self._runtime.values())
        for run in self._scenarios.values():
            found.extend(run.faults)
        return found

    def by_service(self) -> dict[str, tuple[FaultPolicy, ...]]:
        """The faults switched on, by service: what the snapshot carries to the proxy."""
        grouped: dict[str, list[FaultPolicy]] = {}
        for policy in self.policies():
            if policy.enabled:
                grouped.setdefault(policy.service, []).append(policy)
        return {service: tuple(policies) for service, policies in grouped.items()}

    def partitioned(self) -> frozenset[str]:
        """Peers that running scenarios cut this agent off from."""
        return frozenset().union(*(run.partitioned for run in self._scenarios.values()))

    def scenarios(self) -> list[dict[str, object]]:
        return [run.summary() for run in self._scenarios.values()]

    # -- run-time changes ----------------------------------------------------------------------------

    def add(self, policy: FaultPolicy) -> None:
        if policy.name in self._config:
            raise FaultError(
                f"{policy.name!r} is a fault of the config: switch it with enable/disable, or choose another name",
                status=409,
            )
        self._runtime[policy.name] = replace(policy, source="runtime")
        self._on_change("added", {"fault": policy.name})

    def set_enabled(self, name: str, enabled: bool) -> None:
        if name in self._config:
            self._switched[name] = enabled
        elif name in self._runtime:
            self._runtime[name] = replace(self._runtime[name], enabled=enabled)
        else:
            raise FaultError(self._unknown(name), status=404)
        self._on_change("enabled" if enabled else "disabled", {"fault": name})

    def remove(self, name: str) -> None:
        """A run-time fault goes; a config fault is switched off (until the config says otherwise)."""
        if name in self._runtime:
            del self._runtime[name]
        elif name in self._config:
            self._switched[name] = False
        else:
            raise FaultError(self._unknown(name), status=404)
        self._on_change("removed", {"fault": name})

    def clear(self) -> None:
        """Everything off: run-time faults removed, config faults switched off, scenarios stopped."""
        self._runtime.clear()
        self._switched = dict.fromkeys(self._config, False)
        for name in list(self._scenarios):
            self._end(name, announce=False)
        self._on_change("cleared", {})

    def _unknown(self, name: str) -> str:
        known = ", ".join([*self._config, *self._runtime]) or "none"
        return f"no fault named {name!r} (faults: {known})"

    # -- scenarios -----------------------------------------------------------------------------------

    def available(self) -> list[dict[str, object]]:
        """Scenarios that can be run: the config's, then the built-in ones."""
        listed: list[dict[str, object]] = [
            {
                "name": name,
                "source": "config",
                "faults": faults,
                "outage": outage,
                "duration_s": duration,
                "running": name in self._scenarios,
            }
            for name, (faults, outage, duration) in self._scenario_config.items()
        ]
        for kind, what in BUILTINS.items():
            target = "PEER" if kind == "partition" else "SERVICE"
            listed.append(
                {
                    "name": f"{kind}:{target}",
                    "source": "builtin",
                    "description": what,
                    "duration_s": BUILTIN_DURATION_S,
                    "running": any(name.startswith(kind + ":") for name in self._scenarios),
                }
            )
        return listed

    def run(
        self,
        name: str,
        *,
        duration_s: float | None,
        loop: asyncio.AbstractEventLoop,
        services: set[str],
        peers: set[str],
    ) -> ScenarioRun:
        """Turn a scenario on until `duration_s` (or its own duration) has passed; running it again
        restarts its clock."""
        faults, partitioned, default_s = self._plan(name, services, peers)
        seconds = duration_s if duration_s is not None else default_s
        if seconds <= 0:
            raise FaultError("a scenario's duration must be positive (e.g. --duration 60s)")
        if name in self._scenarios:
            self._end(name, announce=False)
        now = time.time()
        run = ScenarioRun(name, faults, partitioned, now, now + seconds)
        run.timer = loop.call_later(seconds, self._end, name)
        self._scenarios[name] = run
        self._on_change("scenario_started", {"scenario": name, "ends_at": run.ends_at})
        return run

    def stop(self, name: str) -> None:
        if name not in self._scenarios:
            running = ", ".join(self._scenarios) or "none"
            raise FaultError(f"scenario {name!r} is not running (running: {running})", status=404)
        self._end(name)

    def close(self) -> None:
        for run in self._scenarios.values():
            if run.timer is not None:
                run.timer.cancel()
        self._scenarios.clear()

    def _end(self, name: str, *, announce: bool = True) -> None:
        run = self._scenarios.pop(name, None)
        if run is None:
            return
        if run.timer is not None:
            run.timer.cancel()
        if announce:
            self._on_change("scenario_ended", {"scenario": name})

    def _plan(
        self, name: str, services: set[str], peers: set[str]
    ) -> tuple[list[FaultPolicy], frozenset[str], float]:
        source = f"scenario:{name}"
        if name in self._scenario_config:
            fault_names, outage, duration = self._scenario_config[name]
            faults = [replace(self._config[fault], enabled=True, source=source) for fault in fault_names]
            faults += [
                FaultPolicy(f"{name}:down:{service}", service, outage="503", source=source)
                for service in outage
            ]
            return faults, frozenset(), duration if duration is not None else BUILTIN_DURATION_S
        kind, _, target = name.partition(":")
        if kind not in BUILTINS or not target:
            choices = ", ".join([*self._scenario_config, *(f"{kind}:NAME" for kind in BUILTINS)])
            raise FaultError(f"no scenario named {name!r} (scenarios: {choices})", status=404)
        if kind == "partition":
            if target not in peers:
                raise FaultError(
                    f"no peer {target!r} (peers: {', '.join(sorted(peers)) or 'none'})", status=404
                )
            return [], frozenset({target}), BUILTIN_DURATION_S
        if target not in services:
            raise FaultError(
                f"no service {target!r} (services: {', '.join(sorted(services)) or 'none'})", status=404
            )
        fault = {
            "slow": FaultPolicy(name, target, delay=SLOW_DELAY, source=source),
            "flaky": FaultPolicy(name, target, abort=503, rate=FLAKY_RATE, source=source),
            "down": FaultPolicy(name, target, outage="503", source=source),
            "reset": FaultPolicy(name, target, outage="reset", source=source),
        }[kind]
        return [fault], frozenset(), BUILTIN_DURATION_S


def policy_summary(policy: FaultPolicy, injected: int) -> dict[str, object]:
    """A fault as the admin API, the events stream and `devmesh fault list` show it."""
    return {
        "name": policy.name,
        "service": policy.service,
        "enabled": policy.enabled,
        "source": policy.source,
        "does": policy.describe(),
        "delay": None
        if policy.delay is None
        else {"low_ms": policy.delay.low_s * 1000, "high_ms": policy.delay.high_s * 1000},
        "abort": policy.abort,
        "outage": policy.outage,
        "bandwidth": policy.bandwidth,
        "rate": policy.rate,
        "paths": list(policy.paths),
        "methods": sorted(policy.methods),
        "headers": dict(policy.headers),
        "injected": injected,
    }
