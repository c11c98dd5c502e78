"""Endpoint failures: retries to the next endpoint where safe, pages that say what was tried, route swaps."""

from __future__ import annotations

import asyncio
import json

from devmesh.mesh.snapshot import Endpoint, Origin
from http_support import Message, backend, refused_port, request_bytes, response, running_proxy, service_view


def two_endpoints(first: int, second: int):  # type: ignore[no-untyped-def]
    view = service_view("api", first, second)
    return view


async def test_connect_failure_is_retried_on_the_next_endpoint() -> None:
    async with backend() as alive, running_proxy(two_endpoints(refused_port(), alive.port)) as proxy:
        for _ in range(4):  # round robin starts on each endpoint in turn; every request must succeed
            answer = await proxy.request("api.localhost", "/x")
            assert answer.status == 200, answer.body
        assert sum(proxy.server.stats.retries.values()) >= 1
        assert sum(proxy.server.stats.upstream_errors.values()) >= 1


async def test_a_503_is_retried_for_get_with_its_body_replayed() -> None:
    async def unavailable(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response(503, b"busy"))

    async with backend(unavailable) as busy, backend() as alive:
        async with running_proxy(two_endpoints(busy.port, alive.port)) as proxy:
            proxy.server._turns["api"] = 0  # start on the busy endpoint
            answer = await proxy.request("api.localhost", "/put", method="PUT", body=b"payload")
            assert answer.status == 200
            assert answer.body == b"payload", "the body is sent again, whole, to the second endpoint"
            assert len(busy.requests) == 1 and busy.requests[0].body == b"payload"


async def test_post_is_retried_only_when_it_never_reached_the_service() -> None:
    async def unavailable(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response(503, b"busy"))

    async with backend() as alive, running_proxy(two_endpoints(refused_port(), alive.port)) as proxy:
        proxy.server._turns["api"] = 0
        answer = await proxy.request("api.localhost", "/orders", method="POST", body=b"{}")
        assert answer.status == 200 and answer.body == b"{}", "a refused connection: the POST never left"

    async with backend(unavailable) as busy, backend() as alive:
        async with running_proxy(two_endpoints(busy.port, alive.port)) as proxy:
            proxy.server._turns["api"] = 0
            answer = await proxy.request("api.localhost", "/orders", method="POST", body=b"{}")
            assert answer.status == 503, "the service saw the POST: sending it again could charge twice"
            assert alive.requests == []


async def test_when_nothing_answers_the_page_says_what_was_tried() -> None:
    async with running_proxy(two_endpoints(refused_port(), refused_port())) as proxy:
        answer = await proxy.request("api.localhost", "/orders", method="POST", body=b"{}")
        assert answer.status == 502
        page = json.loads(answer.body)
        assert page["service"] == "api" and len(page["tried"]) == 3
        assert all("cannot connect" in attempt for attempt in page["tried"])
        assert "devmesh logs api" in page["hint"]


async def test_when_every_endpoint_fails_the_last_answer_is_passed_on() -> None:
    async def unavailable(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response(503, b"still busy"))

    async with (
        backend(unavailable) as busy,
        running_proxy(service_view("api", busy.port), retries=2) as proxy,
    ):
        answer = await proxy.request("api.localhost")
        assert answer.status == 503 and answer.body == b"still busy"
        assert len(busy.requests) == 3  # the first try and two retries


async def test_a_pooled_connection_closed_by_the_service_is_replaced_without_an_error() -> None:
    async def one_per_connection(
        _request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        # Says keep-alive, then closes anyway: what a service with a short idle timeout does.
        writer.write(response(200, b"ok"))
        await writer.drain()
        return False

    async with backend(one_per_connection) as api, running_proxy(service_view("api", api.port)) as proxy:
        for _ in range(5):
            answer = await proxy.request("api.localhost")
            assert answer.status == 200


async def test_route_table_swap_keeps_requests_in_flight_and_routes_new_ones_to_the_new_endpoint() -> None:
    release = asyncio.Event()

    async def slow(request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.wait_for(release.wait(), 10)
        writer.write(response(200, b"old"))

    async def fresh(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, b"new"))

    async with (
        backend(slow) as old,
        backend(fresh) as new,
        running_proxy(service_view("api", old.port)) as proxy,
    ):
        reader, writer = await proxy.connect()
        writer.write(request_bytes("GET", "/", "api.localhost"))
        for _ in range(100):
            if old.requests:
                break
            await asyncio.sleep(0.01)
        proxy.publish(service_view("api", new.port))  # e.g. a restart on a new port, or a config reload
        answer = await proxy.request("api.localhost")
        assert answer.body == b"new"
        release.set()
        raw = await asyncio.wait_for(reader.readuntil(b"old"), 10)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200")


async def test_unhealthy_endpoints_are_skipped_and_served_by_names_the_endpoint() -> None:
    async with backend() as sick, backend() as well, running_proxy() as proxy:
        view = service_view("api", well.port)
        sick_endpoint = Endpoint("api", "127.0.0.1", sick.port, Origin.LOCAL, False, "0.9.0")
        proxy.publish(
            view.__class__(
                **{
                    **{f: getattr(view, f) for f in view.__slots__},
                    "endpoints": (sick_endpoint, *view.endpoints),
                }
            )
        )
        for _ in range(3):
            answer = await proxy.request("api.localhost")
            assert answer.status == 200
            assert answer.header("x-devmesh-served-by") == "local/api@1.0.0"
        assert sick.requests == []


async def test_a_request_for_a_starting_service_waits_for_it_instead_of_failing() -> None:
    from devmesh.mesh.snapshot import RunState

    async with (
        backend() as api,
        running_proxy(service_view("api", api.port, healthy=False, state=RunState.STARTING)) as proxy,
    ):
        pending = asyncio.ensure_future(proxy.request("api.localhost", "/early"))
        await asyncio.sleep(0.2)
        assert not pending.done(), "answered before the service was up"
        proxy.publish(service_view("api", api.port))  # it turns healthy
        answer = await asyncio.wait_for(pending, 5)
        assert answer.status == 200 and answer.header("x-echo-target") == "/early"


async def test_a_service_that_never_comes_up_gets_a_503_after_the_wait() -> None:
    from devmesh.mesh.snapshot import RunState
    from devmesh.proxy.server import ProxyLimits

    limits = ProxyLimits(start_wait_s=0.3, sweep_interval_s=0.05)
    view = service_view("api", refused_port(), healthy=False, state=RunState.STARTING)
    async with running_proxy(view, limits=limits) as proxy:
        answer = await proxy.request("api.localhost")
        assert answer.status == 503
        assert "still starting" in json.loads(answer.body)["message"]


async def test_a_request_waiting_on_an_endpoint_that_leaves_moves_to_the_next_one() -> None:
    silent = asyncio.Event()

    async def hangs(_request: Message, _r: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await silent.wait()  # a peer cut off the network: the request is never answered

    async with backend(hangs) as cut, backend() as alive:
        async with running_proxy(two_endpoints(cut.port, alive.port)) as proxy:
            proxy.server._turns["api"] = 0
            pending = asyncio.ensure_future(proxy.request("api.localhost", "/x", method="PUT", body=b"data"))
            for _ in range(200):
                if cut.requests:
                    break
                await asyncio.sleep(0.01)
            proxy.publish(service_view("api", alive.port))  # the cut-off endpoint left the mesh
            proxy.server.pool.drop(("127.0.0.1", cut.port))
            answer = await asyncio.wait_for(pending, 5)
            assert answer.status == 200 and answer.body == b"data"
            assert answer.header("x-echo-method") == "PUT"
            silent.set()
