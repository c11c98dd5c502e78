from __future__ import annotations

import socket

from devmesh.supervisor.ports import PortAllocator


def test_ports_are_free_and_never_repeated() -> None:
    allocator = PortAllocator(reserved={1})
    ports = {allocator.allocate() for _ in range(20)}
    assert len(ports) == 20
    assert 1 not in ports
    for port in list(ports)[:3]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
