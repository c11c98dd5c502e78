"""The `devmesh.ports` checks: with no agent, the addresses it will listen on are free; with one, each
address it listens on accepts connections."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psutil

from devmesh.preflight.report import FAILED, CheckResult, Report

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig
    from devmesh.config.units import Address

PORT_CONNECT_TIMEOUT_S = 2.0


def loopback_address(address: str) -> tuple[str, int]:
    """(host, port) to connect to for an address an agent listens on: a wildcard is reached on loopback."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return host, int(port)


def ports_to_check(loaded: LoadedConfig) -> list[tuple[str, Address]]:
    """The addresses an agent of this config listens on, by key of [proxy]: mesh only when it shares."""
    proxy = loaded.config.proxy
    ports = [("listen", proxy.listen), ("admin", proxy.admin)]
    if proxy.https is not None:
        ports.append(("https", proxy.https))
    shares = loaded.config.mesh.share or any(spec.share for spec in loaded.config.services.values())
    if shares or loaded.config.peers.static:
        ports.append(("mesh", proxy.mesh))
    return ports


def check_ports_free(loaded: LoadedConfig, report: Report) -> bool:
    """No agent runs: the addresses the agent will listen on must be free. Returns whether all are."""
    free = True
    for key, address in ports_to_check(loaded):
        began = time.monotonic()
        result = CheckResult("devmesh.ports", f"{key} {address}")
        if address.port == 0:
            result.message = "port 0: the agent picks a free port when it starts"
        else:
            error = _bind_error(address)
            if error is None:
                result.message = "free"
            else:
                free = False
                holder = _who_listens(address.port)
                result.outcome = FAILED
                result.message = f"{address} is not free: {error}" + (f", held by {holder}" if holder else "")
                result.hint = (
                    f"stop what listens there (another devmesh? `devmesh down` in its project), or set "
                    f'[proxy] {key} = "{address.host}:0" (any free port) in {loaded.path.name}'
                )
        result.time_s = time.monotonic() - began
        report.add(result)
    return free


def check_ports_answer(agent: Mapping[str, Any], report: Report) -> None:
    """An agent runs (`agent`: the status document's): each address it listens on must accept connections."""
    report.add(
        CheckResult("devmesh.ports", f"admin {agent['admin']}", message="answers (GET /api/v1/status)")
    )
    for key in ("listen", "https", "mesh"):
        address = agent.get(key)
        if not address:
            continue
        began = time.monotonic()
        result = CheckResult("devmesh.ports", f"{key} {address}", message="accepts connections")
        try:
            socket.create_connection(loopback_address(str(address)), timeout=PORT_CONNECT_TIMEOUT_S).close()
        except OSError as error:
            result.outcome = FAILED
            result.message = f"the agent's {key} address {address} refuses connections: {error}"
            result.hint = "see .devmesh/agent.log; `devmesh down && devmesh up --detach` restarts the agent"
        result.time_s = time.monotonic() - began
        report.add(result)


def _bind_error(address: Address) -> str | None:
    """Why `address` cannot be listened on, or None when it is free."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except OSError as error:
        return f"cannot resolve {address.host}: {error}"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent binds: TIME_WAIT is fine
        try:
            sock.bind(sockaddr)
        except OSError as error:
            return error.strerror or str(error)
    return None


def _who_listens(port: int) -> str:
    """`pid 1234 (nginx)` for what holds a local TCP port, when the OS lets us see it."""
    try:
        for connection in psutil.net_connections(kind="tcp"):
            if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
                if connection.pid is None:
                    return "another user's process"
                return f"pid {connection.pid} ({psutil.Process(connection.pid).name()})"
    except Exception:  # best effort: permissions, a process that just exited
        pass
    return ""
