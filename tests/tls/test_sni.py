"""HTTPS handshakes over real sockets against `LocalCA.server_context`: a certificate per server name,
verified by clients that trust the CA and refused by clients that do not.

The server runs the way the proxy runs it, `loop.create_server(..., ssl=context)`, on asyncio's loop and on
uvloop's; one test uses a blocking `SSLSocket` server, whose callback gets an SSLSocket, not an SSLObject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from devmesh.tls import LocalCA
from devmesh.tls import sni as sni_module
from devmesh.tls.sni import SniContexts

DEFAULT_NAMES = ["localhost", "127.0.0.1", "::1"]


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    if sys.platform != "win32":
        import uvloop

        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


@pytest.fixture
def authority(tmp_path: Path) -> LocalCA:
    return LocalCA.load_or_create(tmp_path / "ca")[0]


def client_context(cafile: Path | None, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    # Python 3.13 turns this on by default: the certificates must pass it already.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.set_alpn_protocols(alpn or ["h2", "http/1.1"])
    return context


@dataclass
class Handshake:
    peer_names: list[str]
    alpn: str | None
    version: str | None


class _Hello(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once the TLS handshake is done; uvloop's transport is not an asyncio.WriteTransport.
        cast(asyncio.Transport, transport).write(b"hello\n")


async def _handshake(port: int, name: str, client: ssl.SSLContext) -> Handshake:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=name)
    try:
        assert await reader.readline() == b"hello\n"
        peer = writer.get_extra_info("peercert")
        ssl_object = writer.get_extra_info("ssl_object")
        return Handshake(
            [value for _, value in peer["subjectAltName"]],
            ssl_object.selected_alpn_protocol(),
            ssl_object.version(),
        )
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def run_against(
    server: ssl.SSLContext,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    scenario: Callable[[int], Any],
) -> Any:
    """Serve `server` on 127.0.0.1:0 with `loop.create_server` and run `scenario(port)` against it."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(_Hello, "127.0.0.1", 0, ssl=server, ssl_handshake_timeout=5)
        port = listener.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(scenario(port), 20)
        finally:
            listener.close()
            await listener.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_each_name_gets_a_certificate_the_client_verifies(authority: LocalCA, loop_factory: Any) -> None:
    server = authority.server_context(DEFAULT_NAMES)
    trusting = client_context(authority.cert_path)

    async def scenario(port: int) -> dict[str, Handshake]:
        return {
            name: await _handshake(port, name, trusting)
            for name in ("api.localhost", "x.tenant.localhost", "localhost", "127.0.0.1")
        }

    results = run_against(server, loop_factory, scenario)
    assert "api.localhost" in results["api.localhost"].peer_names
    assert "x.tenant.localhost" in results["x.tenant.localhost"].peer_names
    assert "*.tenant.localhost" in results["x.tenant.localhost"].peer_names
    assert "localhost" in results["localhost"].peer_names
    assert "127.0.0.1" in results["127.0.0.1"].peer_names  # no SNI for an IP: the default leaf
    for handshake in results.values():
        assert handshake.alpn == "http/1.1"  # also after the switch to a per-name context
        assert handshake.version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_a_client_that_does_not_trust_the_ca_fails_verification(
    authority: LocalCA, tmp_path: Path, loop_factory: Any
) -> None:
    server = authority.server_context(DEFAULT_NAMES)
    other, _ = LocalCA.load_or_create(tmp_path / "another-ca")

    async def scenario(port: int) -> list[str]:
        failures = []
        for client in (client_context(other.cert_path), client_context(None)):
            with pytest.raises(ssl.SSLCertVerificationError) as caught:
                await _handshake(port, "api.localhost", client)
            failures.append(str(caught.value))
        return failures

    for failure in run_against(server, loop_factory, scenario):
        assert "certificate verify failed" in failure


def test_http2_only_clients_get_no_alpn_rather_than_a_failure(authority: LocalCA) -> None:
    server = authority.server_context(DEFAULT_NAMES)

    async def scenario(port: int) -> Handshake:
        return await _handshake(port, "api.localhost", client_context(authority.cert_path, alpn=["h2"]))

    assert run_against(server, asyncio.new_event_loop, scenario).alpn is None
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("name", ["bad!name.localhost", "-dash.localhost", "under score.localhost"])
def test_invalid_server_names_get_the_default_certificate(authority: LocalCA, name: str) -> None:
    contexts = SniContexts(authority, DEFAULT_NAMES)
    lenient = client_context(authority.cert_path)
    lenient.check_hostname = False  # still verifies the chain; lets us see which leaf was presented

    async def scenario(port: int) -> Handshake:
        return await _handshake(port, name, lenient)

    try:
        handshake = run_against(contexts.default, asyncio.new_event_loop, scenario)
    except (ValueError, UnicodeError):
        pytest.skip(f"this Python refuses to send {name!r} as a server name")
    assert handshake.peer_names == ["localhost", "127.0.0.1", "0:0:0:0:0:0:0:1"]
    assert contexts.issued == 0 and len(contexts) == 0


def test_refused_names_get_the_default_certificate(authority: LocalCA) -> None:
    contexts = SniContexts(authority, DEFAULT_NAMES, accept_name=lambda name: name.endswith(".localhost"))
    trusting = client_context(authority.cert_path)

    async def scenario(port: int) -> None:
        await _handshake(port, "api.localhost", trusting)
        with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
            await _handshake(port, "www.example.com", trusting)

    run_against(contexts.default, asyncio.new_event_loop, scenario)
    assert contexts.cached_keys() == ["api.localhost"]


def test_a_failing_issue_is_logged_and_the_default_certificate_presented(
    authority: LocalCA, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(name: str) -> bool:
        raise RuntimeError("boom")

    contexts = SniContexts(authority, DEFAULT_NAMES, accept_name=explode)
    trusting = client_context(authority.cert_path)

    async def scenario(port: int) -> Handshake:
        return await _handshake(port, "localhost", trusting)  # default leaf: no callback work

    with caplog.at_level(logging.ERROR, logger="devmesh.tls.sni"):
        run_against(contexts.default, asyncio.new_event_loop, scenario)

        async def failing(port: int) -> None:
            with pytest.raises(ssl.SSLCertVerificationError):
                await _handshake(port, "api.localhost", trusting)

        run_against(contexts.default, asyncio.new_event_loop, failing)
    assert "could not issue a certificate for 'api.localhost'" in caplog.text


def test_the_cache_is_bounded_and_least_recently_used_goes_first(authority: LocalCA) -> None:
    contexts = SniContexts(authority, DEFAULT_NAMES, max_entries=3)
    trusting = client_context(authority.cert_path)

    async def connect(port: int, *names: str) -> None:
        for name in names:
            assert name in (await _handshake(port, name, trusting)).peer_names

    async def scenario(port: int) -> None:
        await connect(port, "a.localhost", "b.localhost", "c.localhost")
        assert contexts.issued == 3
        await connect(port, "a.localhost")  # a hit, which makes a the most recently used
        assert contexts.issued == 3
        await connect(port, "d.localhost", "e.localhost")  # evicts b, then c
        assert contexts.cached_keys() == ["a.localhost", "d.localhost", "e.localhost"]
        await connect(port, "b.localhost")  # issued again
        assert contexts.issued == 6
        assert len(contexts) == 3

    run_against(contexts.default, asyncio.new_event_loop, scenario)


def test_sibling_names_share_one_certificate(authority: LocalCA) -> None:
    contexts = SniContexts(authority, DEFAULT_NAMES)
    trusting = client_context(authority.cert_path)

    async def scenario(port: int) -> list[Handshake]:
        return [
            await _handshake(port, name, trusting) for name in ("a.tenant.localhost", "b.tenant.localhost")
        ]

    first, second = run_against(contexts.default, asyncio.new_event_loop, scenario)
    assert contexts.issued == 1
    assert first.peer_names == ["a.tenant.localhost", "*.tenant.localhost"]
    assert second.peer_names == ["a.tenant.localhost", "*.tenant.localhost"]  # verified through the wildcard


def test_leaves_are_renewed_before_they_expire(authority: LocalCA, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime

    contexts = SniContexts(authority, DEFAULT_NAMES)
    first = contexts.context_for("api.localhost")
    assert contexts.context_for("api.localhost") is first
    # A leaf whose renewal time has passed is issued again on its next use.
    monkeypatch.setattr(sni_module, "RENEW_BEFORE", datetime.timedelta(days=400))
    due = contexts.context_for("web.localhost")
    renewed = contexts.context_for("web.localhost")
    assert due is not None and renewed is not None and renewed is not due
    assert contexts.issued == 3


@pytest.fixture
def threaded_server(authority: LocalCA) -> Iterator[int]:
    """A blocking accept loop with `SSLContext.wrap_socket`: the SNI callback gets an SSLSocket."""
    context = authority.server_context(DEFAULT_NAMES)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                try:
                    with context.wrap_socket(connection, server_side=True) as secured:
                        secured.sendall(b"hello\n")
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        # Closing the listener does not wake a blocked accept() on Linux; a connection does.
        with contextlib.suppress(OSError), socket.create_connection(listener.getsockname(), timeout=1):
            pass
        thread.join(5)
        listener.close()


def test_a_threaded_server_switches_certificates_too(authority: LocalCA, threaded_server: int) -> None:
    trusting = client_context(authority.cert_path)
    with socket.create_connection(("127.0.0.1", threaded_server), timeout=10) as raw:
        with trusting.wrap_socket(raw, server_hostname="web.localhost") as secured:
            assert secured.recv(6) == b"hello\n"
            peer = secured.getpeercert()
            assert peer is not None
            assert ("DNS", "web.localhost") in peer["subjectAltName"]
