"""Free ports for services that do not fix one: asked of the kernel, never handed out twice."""

from __future__ import annotations

import socket

from devmesh.supervisor.runner import SERVICE_HOST


class PortAllocator:
    """Hands out free loopback ports, remembering them so two services never share one."""

    def __init__(self, reserved: set[int] | None = None) -> None:
        self._given: set[int] = set(reserved or ())

    def allocate(self) -> int:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((SERVICE_HOST, 0))
                port = int(probe.getsockname()[1])
            if port not in self._given:
                self._given.add(port)
                return port
        raise OSError("no free port found on 127.0.0.1 after 50 tries")

    def reserve(self, port: int) -> None:
        self._given.add(port)

    def release(self, port: int) -> None:
        self._given.discard(port)
