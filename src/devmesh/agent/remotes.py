"""The remote fallback while the agent runs: every service's `remote` probed in the background.

A change of a remote's health or announced version is logged once, told to a remote-only service's
runner (which follows its remote instead of a process), and published in a new snapshot.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devmesh.config.schema import MeshConfig
    from devmesh.health.remote import RemoteTarget
    from devmesh.routing.remote import RemoteStatus
    from devmesh.supervisor.logs import LogSink
    from devmesh.supervisor.manager import Supervisor


def remote_targets(config: MeshConfig) -> dict[str, RemoteTarget]:
    """Each service's remote, and the path to ask it for (its `health.http`, else `/`)."""
    from devmesh.health.remote import RemoteTarget

    return {
        name: RemoteTarget(spec.remote, spec.health.http if spec.health and spec.health.http else "/")
        for name, spec in config.services.items()
        if spec.remote is not None
    }


class RemoteWatch:
    """The remotes of the current config (`config()`, read anew after each reload), probed until closed."""

    def __init__(
        self,
        *,
        config: Callable[[], MeshConfig],
        supervisor: Supervisor,
        logs: LogSink,
        tls_context: Callable[[], ssl.SSLContext],
        on_change: Callable[[], None],
    ) -> None:
        from devmesh.health.remote import RemoteProber

        self._config = config
        self._supervisor = supervisor
        self._logs = logs
        self._on_change = on_change
        self._prober = RemoteProber(tls_context=tls_context, on_change=self._changed)
        self._said: dict[str, tuple[object, ...]] = {}  # what the log last said of each remote

    @property
    def statuses(self) -> Mapping[str, RemoteStatus]:
        """What the last probes of each remote found (none yet: not in the mapping)."""
        return self._prober.statuses

    def start(self) -> None:
        """Probe every remote in the config (`health.remote`)."""
        self._prober.update(remote_targets(self._config()))

    def reload(self) -> None:
        """After a config reload: probe the remotes it names, and tell the runners it made anew what is
        known of their remotes."""
        config = self._config()
        self._prober.update(remote_targets(config))
        for name in config.services:
            self._follow(name)

    async def close(self) -> None:
        await self._prober.close()

    def _changed(self, name: str) -> None:
        """A probe changed what is known of `name`'s remote: say so (once per change), tell a remote-only
        service's runner, and publish a snapshot with the remote's new health and version."""
        self._log(name)
        self._follow(name)
        self._on_change()

    def _follow(self, name: str) -> None:
        from devmesh.routing.remote import remote_health

        config = self._config()
        spec = config.services.get(name)
        if spec is None:
            return
        usable, detail = remote_health(self.statuses.get(name), spec.requires, config.mesh.version_policy)
        self._supervisor.follow_remote(name, usable, detail)

    def _log(self, name: str) -> None:
        from devmesh.routing.remote import version_accepted

        config = self._config()
        spec = config.services.get(name)
        status = self.statuses.get(name)
        if spec is None or spec.remote is None or status is None:
            return
        policy = config.mesh.version_policy
        outside = not version_accepted(status.version, spec.requires)
        said = (
            status.healthy,
            status.reason if not status.healthy else None,
            outside,
            status.version,
            policy,
        )
        if self._said.get(name) == said:
            return
        previous = self._said.get(name)
        self._said[name] = said
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
