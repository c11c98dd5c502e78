"""What an agent offers its peers: the catalog served at `GET /mesh/v1/catalog` on the mesh port."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from devmesh.config.schema import is_service_name

CATALOG_PATH = "/mesh/v1/catalog"
PROTOCOL_VERSION = 1
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OfferedService:
    name: str
    version: str | None
    healthy: bool


@dataclass(frozen=True, slots=True)
class Catalog:
    peer: str  # the offering agent's id
    mesh: str  # mesh_hash(): agents of another mesh are ignored
    epoch: float  # the agent's boot time: a restarted peer is a new peer
    revision: int
    services: list[OfferedService] = field(default_factory=list)
    protocol: int = PROTOCOL_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Catalog:
        """Parse a peer's catalog; ValueError on anything that is not one."""
        try:
            raw: Any = json.loads(data)
            services = []
            for item in raw["services"]:
                name = str(item["name"])
                if not is_service_name(name):
                    # A peer's names become host names, and config lines in an exported proxy config.
                    _log.warning(
                        "peer %r offers a service named %r, which is not a service name; left out",
                        raw.get("peer"),
                        name,
                    )
                    continue
                services.append(OfferedService(name, item.get("version"), bool(item["healthy"])))
            return cls(
                peer=str(raw["peer"]),
                mesh=str(raw["mesh"]),
                epoch=float(raw["epoch"]),
                revision=int(raw["revision"]),
                services=services,
                protocol=int(raw.get("protocol", PROTOCOL_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a devmesh catalog: {error}") from None
