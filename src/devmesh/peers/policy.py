"""What an agent's mesh port accepts from peers."""

from __future__ import annotations

from collections.abc import Callable

from devmesh.peers.signing import Verdict, Verifier


class MeshPolicy:
    """Signed requests (when the mesh has a secret), for the services this agent offers."""

    def __init__(
        self, verifier: Verifier | None, *, catalog: Callable[[], bytes], offers: Callable[[str], bool]
    ) -> None:
        self.verifier = verifier
        self.catalog = catalog
        self.offers = offers

    def check(self, method: str, target: str, headers: dict[str, str]) -> Verdict:
        if self.verifier is None:
            return Verdict(True, headers.get("x-devmesh-peer", ""))
        return self.verifier.check(method, target, headers)

    @property
    def refused(self) -> int:
        return self.verifier.refused if self.verifier is not None else 0
