"""`devmesh replay ID`: send a recorded request again, through the agent's own proxy.

The agent keeps headers and sizes of recent requests, not bodies: a request that had a body cannot be
replayed faithfully, so it is refused with a message rather than sent without its body.
"""

from __future__ import annotations

import asyncio
import time

from devmesh import const
from devmesh.config.units import Address
from devmesh.proxy.observe import RequestRecord
from devmesh.supervisor.manager import SupervisorError

# Framing and connection headers are the new request's own; a replay is a new trace of its own, marked
# with the request it repeats.
_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"content-length",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"expect",
        b"x-devmesh-trace-id",
        b"traceparent",
        b"tracestate",
    }
)


async def replay_request(record: RequestRecord, proxy: Address) -> dict[str, object]:
    """Send `record` again to the proxy at `proxy`; what came back: status, time, trace id, served by."""
    if record.request_bytes:
        raise SupervisorError(
            f"request {record.id} had a {record.request_bytes}-byte body, and devmesh keeps headers and "
            "sizes of requests, not bodies: send it again from your client",
            status=409,
        )
    headers = record.headers or []
    if any(name.lower() == b"upgrade" for name, _ in headers) or record.method == "CONNECT":
        raise SupervisorError(
            f"request {record.id} opened a tunnel (WebSocket or CONNECT): it cannot be replayed"
        )
    lines = [f"{record.method} {record.path} HTTP/1.1".encode("latin-1")]
    lines.extend(name + b": " + value for name, value in headers if name.lower() not in _DROPPED)
    lines.append(b"X-DevMesh-Replay-Of: %d" % record.id)
    lines.append(b"Connection: close")
    request = b"\r\n".join(lines) + b"\r\n\r\n"
    started = time.monotonic()
    try:
        async with asyncio.timeout(const.REPLAY_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            try:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                # Read (and drop) the body so the duration covers the whole answer, as the original's did.
                while await reader.read(65536):
                    pass
            finally:
                writer.close()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as error:
        raise SupervisorError(
            f"replaying request {record.id} failed: {error or type(error).__name__}"
        ) from None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines if line)
    }
    parts = status_line.split(" ", 2)
    return {
        "replayed": record.id,
        "status": int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
        "trace_id": answer.get("x-devmesh-trace-id"),
        "served_by": answer.get("x-devmesh-served-by"),
    }
