"""What the agent listens with: ports bound before any service starts, the admin API's uvicorn on the
agent's loop, and the TLS contexts of the HTTPS listener and the mesh port.

A port that is taken or a certificate that is missing fails `devmesh up` here, with the config key to
change, before anything is half-started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from devmesh import const
from devmesh.agent.errors import AgentError
from devmesh.config.units import Address

if TYPE_CHECKING:
    from devmesh.config.schema import MeshTLS


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_tcp(address: Address, *, purpose: str, key: str) -> socket.socket:
    """A listening socket for `address`, or an AgentError naming the config key to change."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise AgentError(
            f"cannot listen on {address} for the {purpose}: {error.strerror or error} "
            f"(is another devmesh running? change {key} in devmesh.toml, or stop what holds the port)"
        ) from None
    sock.setblocking(False)
    return sock


class EmbeddedUvicorn:
    """uvicorn on the agent's loop, without uvicorn's own signal handling (the agent owns signals)."""

    def __init__(self, app: object, sock: socket.socket) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # type: ignore[no-untyped-def]
                yield

        self._sock = sock
        self._server = Server(
            uvicorn.Config(
                app,  # type: ignore[arg-type]
                log_level="warning",
                lifespan="off",
                access_log=False,
                loop="none",
                ws="websockets-sansio",
                ws_ping_interval=None,  # loopback: a dead client shows as a closed socket
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise AgentError("the admin API stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, const.AGENT_STOP_TIMEOUT_S)
        self._sock.close()


def https_context(domain: str) -> tuple[ssl.SSLContext, str | None]:
    """The HTTPS listener's context, with certificates for the mesh's names issued on demand by
    devmesh's local CA (created on first use); and a note for the terminal if it was just created."""
    from devmesh.tls import CAError, LocalCA

    try:
        ca, created = LocalCA.load_or_create()
    except CAError as error:
        raise AgentError(f"[proxy] https is set, but {error}") from None
    suffix = "." + domain
    context = ca.server_context(
        [domain, "localhost", "127.0.0.1", "::1"],
        accept_name=lambda name: name == domain or name.endswith(suffix),
    )
    note = f"created a local certificate authority in {ca.directory}; run `devmesh trust` to trust it"
    return context, note if created else None


def mesh_tls_contexts(project_dir: Path, settings: MeshTLS) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """`[proxy] mesh_tls`: (the mesh port's server context, the client context for requests to peers)."""
    from devmesh.peers.tls import MeshTLSError, mesh_contexts

    try:
        return mesh_contexts(project_dir, settings)
    except MeshTLSError as error:
        raise AgentError(str(error)) from None
