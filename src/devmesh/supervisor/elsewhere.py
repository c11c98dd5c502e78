"""A service served elsewhere: declared with neither `command` nor `port` (nor a health command), so
nothing runs or is checked here; a teammate's agent (a peer) or the service's `remote` serves it.

Its state is a pure function of what each place that could serve it says (`Source`): running and
healthy while one of them serves it; "starting" while one of them has not been heard from yet (peers may
still answer, the remote's first probe is on its way); stopped and unhealthy, with every reason, once all
of them said no. `depends_on` waits for it either way (a dependent starts only on healthy); the state and
its detail are what `devmesh status` and `devmesh up --detach` report.
"""

from __future__ import annotations

from dataclasses import dataclass

from devmesh.config.schema import ServiceSection
from devmesh.mesh.snapshot import Health, RunState


@dataclass(frozen=True, slots=True)
class Source:
    """What one place that could serve the service says of it."""

    usable: bool | None  # None: not heard from yet
    detail: str | None = None  # why not (or what it is waiting for)


NOTHING_SERVES = (
    "nothing serves it: it has no command, port or remote, and this agent follows no peers "
    "(set [peers] static, or [mesh] secret for mDNS)"
)


def served_elsewhere(spec: ServiceSection) -> bool:
    """Declared with neither `command` nor `port` nor a health command: nothing to run or check here."""
    return spec.command is None and spec.port is None and (spec.health is None or spec.health.cmd is None)


def decide(peers: Source | None, remote: Source | None) -> tuple[RunState, Health, str | None]:
    """(state, health, detail) of a service served elsewhere, from what its peers say (None: this agent
    follows no peers) and what its remote says (None: it has none)."""
    sources = [source for source in (peers, remote) if source is not None]
    if any(source.usable for source in sources):
        return RunState.RUNNING, Health.HEALTHY, None
    if not sources:
        return RunState.STOPPED, Health.UNHEALTHY, NOTHING_SERVES
    detail = "; ".join(source.detail for source in sources if source.detail) or None
    if any(source.usable is None for source in sources):
        return RunState.STARTING, Health.UNKNOWN, detail
    return RunState.STOPPED, Health.UNHEALTHY, detail
