"""What the data plane answers: an applied or rejected config, and drift found behind its back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Where an apply stopped: render (the model cannot be written as a config), test (`nginx -t`), start (the
# first master did not come up), reload (the master kept its old config), confirm (the new config was not
# seen live in time).
Stage = Literal["render", "test", "start", "reload", "confirm"]


class EngineError(RuntimeError):
    """The data plane cannot run at all (no nginx binary, an unusable prefix); the message says the fix."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of `apply` or `repair`.

    `status`: "applied" (the new config is live and confirmed), "unchanged" (the same config was already
    live: nothing reloaded) or "rejected" (nginx refused it; `details` has nginx's own words and the
    previous config still serves when `rolled_back` or when the test step refused it).
    """

    status: Literal["applied", "unchanged", "rejected"]
    revision_id: str
    config_hash: str  # sha256 of the rendered route table (without the control server)
    stage: Stage | None = None  # where a rejection happened
    details: str | None = None
    rolled_back: bool = False  # a rejected reload whose previous config was restored and seen live again
    live_revision_id: str | None = None  # what serves after this call (None: nothing does)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "rejected"

    def summary(self) -> str:
        """One line for the agent's log."""
        if self.status == "applied":
            return (
                f"nginx: revision {self.revision_id} live ({self.config_hash[:12]}, {self.duration_s:.2f}s)"
            )
        if self.status == "unchanged":
            return f"nginx: revision {self.revision_id} unchanged ({self.config_hash[:12]})"
        serving = (
            f"revision {self.live_revision_id} still serves"
            if self.live_revision_id is not None
            else "nothing serves"
        )
        first = (self.details or "").strip().splitlines()[:1]
        return f"nginx rejected revision {self.revision_id} at {self.stage}: {first[0] if first else '?'} ({serving})"


@dataclass(frozen=True, slots=True)
class DriftReport:
    """What changed behind the engine's back since it last wrote and confirmed a config."""

    files: tuple[tuple[str, str], ...] = ()  # (path, "changed" | "missing")
    process: str | None = None  # the master is gone, or another config answers on the control server
    live_revision_id: str | None = None  # what the control server says serves now

    @property
    def drifted(self) -> bool:
        return bool(self.files or self.process)

    def describe(self) -> str:
        parts = [f"{path} {what} behind devmesh's back" for path, what in self.files]
        if self.process:
            parts.append(self.process)
        return "; ".join(parts) or "no drift"
