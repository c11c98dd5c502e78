"""The admin API's request and response bodies (these shape the OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from devmesh.config.schema import FaultSection, HealthSection, Port, PositiveDuration


class EndpointStatus(BaseModel):
    address: str
    origin: str
    peer: str | None = None
    version: str | None = None
    healthy: bool


class ServiceStatus(BaseModel):
    name: str
    origin: str
    state: str
    health: str
    pid: int | None
    port: int | None
    url: str | None
    version: str | None
    hosts: list[str]
    restarts: int
    detail: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    declared: bool = True  # in this project's config (or registered here); False: only a peer offers it
    requires: str | None = None
    remote: str | None = None
    pin: str | None = None  # set by `devmesh route`: local | remote | peer=ID
    endpoints: list[EndpointStatus] = Field(default_factory=list)  # in the order they are tried


class AgentInfo(BaseModel):
    pid: int
    peer_id: str = ""  # this agent, as its peers know it
    config: str
    files: list[str]
    admin: str
    listen: str | None
    https: str | None = None
    mesh: str | None = None  # the mesh port, when this agent shares or follows peers
    mesh_refused: int = 0  # peer requests refused on the mesh port (bad, missing or replayed signatures)
    config_error: str | None = None
    revision: int
    # `up --hub`: {url, connected, workspace, agent_id, revision (the hub revision applied), peers, error}
    hub: dict[str, object] | None = None


class StatusDocument(BaseModel):
    mesh: str
    agent: AgentInfo | None
    services: list[ServiceStatus]
    peers: list[dict[str, object]] = Field(default_factory=list)
    faults: list[dict[str, object]] = Field(default_factory=list)
    scenarios: list[dict[str, object]] = Field(default_factory=list)  # running ones, with ends_at


class FaultSpec(FaultSection):
    """A fault added at run time: a `[faults.NAME]` table with its name."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")


class ScenarioRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duration: PositiveDuration | None = None  # default: the scenario's own, or 60 s


class Registration(BaseModel):
    """An external process joining the mesh: `{name, port, version, health}`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    port: Port
    version: str | None = None
    health: str | HealthSection | None = Field(
        default=None, description='a path for an HTTP check ("/health") or a health table as in the config'
    )


class RoutePin(BaseModel):
    """`{"pin": "local" | "remote" | "peer=ID"}`: where requests for a service go, whatever else is up."""

    pin: str  # checked by the agent (routing.table.parse_pin), which says what a pin may be


class ActionResult(BaseModel):
    ok: bool = True
    service: str
    action: str
    started: list[str] = Field(default_factory=list)


class Problem(BaseModel):
    error: str


class ReplayResult(BaseModel):
    """What a replayed request got: the new request's id (in /api/v1/requests) and its answer."""

    replayed: int
    id: int | None
    status: int
    duration_ms: float
    trace_id: str | None
    served_by: str | None
