"""Fuzzing the request path with hypothesis: whatever a client sends, the proxy never crashes.

One backend and one proxy run on an event loop in a background thread for the whole test (not per
example); each example is sent from this thread on a new blocking socket. Per example the proxy must
answer with a well-formed HTTP/1.1 response or close, keep serving a fresh connection with a 200 from the
service, let no exception reach its loop, and hand the service no request that a strict parser does not
see in the bytes the client sent (no smuggling). Requests that are valid by construction must come back
from the service with their body intact, whatever the framing. At the end no client connection is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devmesh.proxy.server import ProxyLimits
from http_support import Backend, Message, RunningProxy, backend, response, running_proxy, service_view

T = TypeVar("T")

# Tiny timeouts: a truncated example costs ~0.15 s before the proxy gives up on it.
LIMITS = ProxyLimits(
    header_timeout_s=0.1,
    body_idle_timeout_s=0.1,
    keepalive_timeout_s=0.15,
    sweep_interval_s=0.02,
    max_header_bytes=8192,
    max_headers=40,
    max_url_bytes=2048,
)
EXAMPLE_WAIT_S = 1.0  # the longest an example waits for the proxy to answer or close
# What the proxy itself may answer; 502/504 would mean it forwarded something the service could not parse.
PROXY_STATUSES = {100, 200, 400, 404, 405, 408, 413, 414, 417, 431, 501, 503}


# -- the proxy on a background loop -------------------------------------------------------------------


async def _echo_body(request: Message, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, request.body, {"X-Echo-Target": request.target}))


class BackgroundProxy:
    """A backend and a proxy on their own event loop in a thread, shared by every example."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.api: Backend | None = None
        self.proxy: RunningProxy | None = None
        self.failure: BaseException | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> BackgroundProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        if self.failure is not None:
            raise self.failure
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the proxy's loop did not stop"
        if self.failure is not None:
            raise self.failure  # running_proxy's own check: an exception reached the loop

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with (
                backend(_echo_body) as api,
                running_proxy(
                    service_view("api", api.port),
                    service_view("wild", api.port, hosts=("*.wild",)),
                    service_view("down", api.port, healthy=False),
                    limits=LIMITS,
                ) as proxy,
            ):
                self.api, self.proxy = api, proxy
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:  # handed to the test thread
            self.failure = error
        finally:
            self._ready.set()

    @property
    def port(self) -> int:
        assert self.proxy is not None
        return self.proxy.port

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the proxy's loop (its state is only touched from there) and return its result."""
        assert self.loop is not None

        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def errors(self) -> list[dict[str, object]]:
        return self.call(lambda: list(self.proxy.errors if self.proxy else []))

    def backend_targets(self) -> list[str]:
        return self.call(lambda: [request.target for request in (self.api.requests if self.api else [])])

    def open_connections(self) -> int:
        return self.call(lambda: len(self.proxy.server.connections) if self.proxy else 0)


# -- a blocking client ----------------------------------------------------------------------------------


@dataclass
class _ResponseCollector:
    status: int = 0
    headers_done: bool = False
    complete: bool = False
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


@dataclass
class Outcome:
    raw: bytes = b""
    closed: bool = False
    first: _ResponseCollector | None = None
    parse_error: str | None = None


def send(port: int, data: bytes, *, head_only: bool = False, wait: float = EXAMPLE_WAIT_S) -> Outcome:
    """Send `data` on a new connection; read until the first response is complete, the proxy closes, or
    `wait` passes; then close. The first response is parsed strictly."""
    outcome = Outcome()
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    deadline = time.monotonic() + wait
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(OSError):  # the proxy may close before it has read everything
            sock.sendall(data)
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                outcome.closed = True
                break
            if not chunk:
                outcome.closed = True
                break
            outcome.raw += chunk
            if outcome.parse_error is None and not collector.complete:
                try:
                    parser.feed_data(chunk)
                except httptools.HttpParserUpgrade:
                    collector.complete = True
                except httptools.HttpParserError as error:
                    outcome.parse_error = str(error)
            if collector.complete or (head_only and collector.headers_done) or outcome.parse_error:
                break
    if collector.headers_done:
        collector.status = parser.get_status_code()
        outcome.first = collector
    return outcome


# -- what a client may send -----------------------------------------------------------------------------

CONTROL = st.sampled_from([b"\x00", b"\r", b"\n", b"\t", b" ", b"\x7f", b"\xff", b"\x01", b":", b",", b";"])
TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=12
)
_COMMON_METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "PRI"]
)
METHODS = st.one_of(
    *[_COMMON_METHODS] * 6,
    st.sampled_from(["get", "G ET", "", "FROB", "M-SEARCH", "PURGE", "GET\x00"]),
    TOKEN,
)
TARGETS = st.one_of(
    st.just("/"),
    st.integers(0, 999).map(lambda n: f"/t/{n}"),
    st.integers(0, 999).map(lambda n: f"/t/{n}?q={n}"),
    st.sampled_from(
        [
            "*",
            "http://api.localhost/abs",
            "http://API.localhost:7080",
            "https://x.wild.localhost/w",
            "http://example.com/",
            "//api.localhost/",
            "/%00",
            "/a/../../etc",
            "api.localhost:443",
            "/" + "a" * 3000,
        ]
    ),
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=20).map(lambda text: "/" + text),
)
VERSIONS = st.sampled_from(
    ["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.1 ", "HTTP/1.2", ""]
)
HOSTS = st.one_of(
    st.sampled_from(["api.localhost"] * 4 + ["API.LOCALHOST:7080", "a.b.wild.localhost", "down.localhost"]),
    st.sampled_from(
        ["nope.localhost", "", "[::1]:7080", "localhost", "api.localhost.", "api.localhost:99999"]
    ),
    st.binary(max_size=12).map(lambda raw: raw.decode("latin-1")),
)
_KNOWN_NAMES = st.sampled_from(
    [
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "Host",
        "Accept",
        "X-DevMesh-Trace-ID",
        "traceparent",
        "TE",
        "Trailer",
        "Forwarded",
        "X-Forwarded-For",
        "Keep-Alive",
        "Proxy-Connection",
        "Via",
    ]
)
HEADER_NAMES = st.one_of(
    _KNOWN_NAMES,
    _KNOWN_NAMES,
    TOKEN,
    st.binary(min_size=1, max_size=6).map(lambda raw: raw.decode("latin-1")),
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "5",
            "-1",
            "1, 1",
            "chunked",
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "close",
            "keep-alive",
            "Upgrade",
            "websocket",
            "100-continue",
            "text/html",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "x" * 9000,
        ]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    st.binary(max_size=20).map(lambda raw: raw.decode("latin-1")),
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8)
LINE_ENDS = st.sampled_from(["\r\n"] * 25 + ["\n", "\r", "\r\n ", "\r\n\t", " \r\n"])


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` in chunks of random sizes, with optional extensions and trailers."""
    out = b""
    rest = body
    while rest:
        size = draw(st.integers(1, max(1, len(rest))))
        extension = draw(st.sampled_from([b"", b"", b";a=b", b";x"]))
        out += b"%x%b\r\n%b\r\n" % (size, extension, rest[:size])
        rest = rest[size:]
    trailers = draw(st.sampled_from([b"", b"", b"X-Checksum: 42\r\n"]))
    return out + b"0\r\n" + trailers + b"\r\n"


@dataclass
class Example:
    data: bytes
    method: str
    expected_body: bytes | None  # for requests valid by construction: what the service must echo


@st.composite
def valid_requests(draw: st.DrawFn) -> Example:
    """A well-formed request for `api`, framed by Content-Length, chunked, or not at all."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    target = draw(st.integers(0, 999).map(lambda n: f"/t/{n}"))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    head = f"{method} {target} HTTP/1.1\r\nHost: api.localhost\r\n".encode()
    extra = draw(
        st.lists(
            st.tuples(TOKEN, st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=10)),
            max_size=3,
        )
    )
    for name, value in extra:
        if name.lower() not in {
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "expect",
            "te",
            "trailer",
        }:
            head += f"X-{name}: {value}\r\n".encode()
    if framing == "length":
        data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        data = head + b"Transfer-Encoding: chunked\r\n\r\n" + draw(chunked_body(body))
    else:
        body = b""
        data = head + b"\r\n"
    return Example(data, method, body)


@st.composite
def built_requests(draw: st.DrawFn) -> Example:
    """A request assembled from hostile parts: odd methods, targets, versions, headers, line ends, framing."""
    end = draw(LINE_ENDS)
    method = draw(METHODS)
    version = draw(VERSIONS) if draw(st.integers(0, 3)) == 0 else "HTTP/1.1"
    lines = [f"{method} {draw(TARGETS)} {version}"]
    if draw(st.integers(0, 9)):
        lines.append(f"Host: {draw(HOSTS)}")
    lines += [f"{name}: {value}" for name, value in draw(HEADERS)]
    body_bytes = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["none", "length", "wrong-length", "chunked", "both", "bad-chunk"]))
    body = b""
    if framing == "length":
        lines.append(f"Content-Length: {len(body_bytes)}")
        body = body_bytes
    elif framing == "wrong-length":
        lines.append(f"Content-Length: {len(body_bytes) + draw(st.sampled_from([-1, 1, 50]))}")
        body = body_bytes
    elif framing in ("chunked", "both", "bad-chunk"):
        lines.append("Transfer-Encoding: chunked")
        if framing == "both":
            lines.append(f"Content-Length: {len(body_bytes)}")
        body = draw(chunked_body(body_bytes))
        if framing == "bad-chunk":
            body = (
                draw(st.sampled_from([b"zz\r\n", b"-1\r\n", b"ffffffffffffffffff\r\n", b"5\nhello\n"])) + body
            )
    text = end.join(lines) + end + end
    return Example(text.encode("latin-1") + body, method, None)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Example]) -> Example:
    """`base`, then maybe truncated, with bytes flipped, inserted or removed, or followed by more requests."""
    example = draw(base)
    data = bytearray(example.data)
    mutations = draw(
        st.lists(st.sampled_from(["truncate", "flip", "insert", "delete", "pipeline", "control"]), max_size=3)
    )
    for mutation in mutations:
        if not data:
            break
        index = draw(st.integers(0, len(data) - 1))
        if mutation == "truncate":
            del data[index:]
        elif mutation == "flip":
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif mutation == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif mutation == "delete":
            del data[index : index + draw(st.integers(1, 8))]
        elif mutation == "pipeline":
            data += draw(valid_requests()).data
        elif mutation == "control":
            data[index:index] = draw(CONTROL)
    expected = example.expected_body if not mutations else None
    return Example(bytes(data), example.method, expected)


REQUESTS = st.one_of(valid_requests(), mutated(valid_requests()), mutated(built_requests()), built_requests())


# -- the oracle -----------------------------------------------------------------------------------------


def _absolute_path(target: str) -> str:
    lowered = target[:8].lower()
    if lowered.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        return "/" if slash < 0 else rest[slash:]
    return target


class _RequestTargets:
    def __init__(self) -> None:
        self.targets: list[str] = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.targets.append(_absolute_path(self.url.decode("latin-1")))
        self.url = b""


def requests_in(data: bytes) -> list[str]:
    """The targets of every request head a strict parser finds in `data`, up to its first error."""
    collector = _RequestTargets()
    parser = httptools.HttpRequestParser(collector)
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        parser.feed_data(data)
    return collector.targets


def check_example(harness: BackgroundProxy, example: Example, probe: str, seen: set[str]) -> Outcome:
    """Send `example`, check the answer, then check the proxy still serves and nothing was smuggled."""
    outcome = send(harness.port, example.data, head_only=example.method.upper() == "HEAD")
    seen.update(requests_in(example.data))
    seen.add(probe)

    if outcome.raw:
        assert (
            outcome.raw[:9] == b"HTTP/1.1 " and outcome.raw[9:12].isdigit() and outcome.raw[12:13] == b" "
        ), outcome.raw[:80]
        assert outcome.parse_error is None, (
            f"malformed response: {outcome.parse_error}: {outcome.raw[:300]!r}"
        )
    if outcome.first is not None:
        assert outcome.first.status in PROXY_STATUSES, outcome.raw[:300]
    if example.expected_body is not None:
        assert outcome.first is not None and outcome.first.complete, outcome.raw[:300]
        assert outcome.first.status == 200, outcome.raw[:300]
        if example.method != "HEAD":
            assert outcome.first.body == example.expected_body

    # The proxy still serves a fresh connection, straight from the service.
    health = send(harness.port, f"GET {probe} HTTP/1.1\r\nHost: api.localhost\r\n\r\n".encode(), wait=3.0)
    assert health.first is not None and health.first.complete and health.first.status == 200, health.raw[:300]
    assert (b"x-echo-target", probe.encode()) in health.first.headers

    assert harness.errors() == [], "an exception reached the proxy's event loop"
    smuggled = [target for target in harness.backend_targets() if target not in seen]
    assert not smuggled, f"the service got requests the client never sent: {smuggled}"
    return outcome


# -- the tests ------------------------------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def test_the_request_path_survives_hostile_input() -> None:
    with BackgroundProxy() as harness:
        seen: set[str] = set()
        counter = iter(range(1_000_000))

        @FUZZ_SETTINGS
        @given(REQUESTS)
        def example(request: Example) -> None:
            probe = f"/__probe/{next(counter)}"
            check_example(harness, request, probe, seen)

        example()

        # Every client connection was closed by now; the proxy must not keep any of them.
        deadline = time.monotonic() + 3
        while harness.open_connections() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert harness.open_connections() == 0, "client connections leaked"


def test_requests_valid_by_construction_come_back_intact() -> None:
    """No mutations: any framing (length, chunked with random chunk sizes and extensions, none) round-trips."""
    with BackgroundProxy() as harness:
        seen: set[str] = set()
        counter = iter(range(1_000_000))

        @settings(FUZZ_SETTINGS, max_examples=60)
        @given(valid_requests())
        def example(request: Example) -> None:
            probe = f"/__probe/{next(counter)}"
            check_example(harness, request, probe, seen)

        example()


def test_nothing_pipelined_after_a_closing_answer_reaches_the_service() -> None:
    """Once the proxy answers with `Connection: close` (400 for no Host, 405, ...), what follows on the
    connection is never forwarded (regression: the rest of the read went on being parsed and forwarded)."""
    with BackgroundProxy() as harness:
        seen: set[str] = set()
        counter = iter(range(1_000_000))

        @settings(FUZZ_SETTINGS, max_examples=100)
        @given(st.one_of(built_requests(), mutated(built_requests())))
        def example(first: Example) -> None:
            number = next(counter)
            after = f"/after/{number}"
            data = first.data + f"GET {after} HTTP/1.1\r\nHost: api.localhost\r\n\r\n".encode()
            outcome = check_example(harness, Example(data, first.method, None), f"/__probe/{number}", seen)
            if outcome.first is not None and (b"connection", b"close") in outcome.first.headers:
                # The proxy said it will close: what follows on this connection is never forwarded.
                assert after not in harness.backend_targets(), outcome.raw[:200]

        example()
