"""Spreading requests over endpoints: round robin, least connections, random, and cookie affinity."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

from http_support import Message, backend, response, running_proxy, service_view


def named(tag: str):  # type: ignore[no-untyped-def]
    async def handler(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, tag.encode()))

    return handler


async def test_round_robin_spreads_requests_evenly() -> None:
    async with backend(named("a")) as a, backend(named("b")) as b:
        async with running_proxy(service_view("api", a.port, b.port)) as proxy:
            bodies = Counter([(await proxy.request("api.localhost")).body for _ in range(10)])
            assert bodies == {b"a": 5, b"b": 5}


async def test_least_conn_avoids_the_busy_endpoint() -> None:
    release = asyncio.Event()

    async def slow(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.wait_for(release.wait(), 10)
        writer.write(response(200, b"slow"))

    async with backend(slow) as busy, backend(named("free")) as free:
        view = dataclasses.replace(service_view("api", busy.port, free.port), lb="least_conn")
        async with running_proxy(view) as proxy:
            pending = asyncio.ensure_future(proxy.request("api.localhost"))  # occupies the first endpoint
            for _ in range(200):
                if busy.requests:
                    break
                await asyncio.sleep(0.01)
            bodies = [(await proxy.request("api.localhost")).body for _ in range(4)]
            assert bodies == [b"free"] * 4
            release.set()
            assert (await pending).body == b"slow"


async def test_random_uses_every_endpoint() -> None:
    async with backend(named("a")) as a, backend(named("b")) as b:
        view = dataclasses.replace(service_view("api", a.port, b.port), lb="random")
        async with running_proxy(view) as proxy:
            bodies = {(await proxy.request("api.localhost")).body for _ in range(40)}
            assert bodies == {b"a", b"b"}


async def test_a_sticky_cookie_keeps_a_client_on_its_endpoint() -> None:
    async with backend(named("a")) as a, backend(named("b")) as b:
        view = dataclasses.replace(service_view("api", a.port, b.port), sticky="cookie")
        async with running_proxy(view) as proxy:
            first = await proxy.request("api.localhost")
            cookie = first.header("set-cookie")
            assert cookie is not None and cookie.startswith("devmesh-api=") and "HttpOnly" in cookie
            pair = cookie.split(";")[0]
            followed = [
                await proxy.request("api.localhost", headers={"Cookie": f"theme=dark; {pair}"})
                for _ in range(6)
            ]
            assert {answer.body for answer in followed} == {first.body}
            assert all(answer.header("set-cookie") is None for answer in followed), "no new cookie once set"
            fresh = {(await proxy.request("api.localhost")).body for _ in range(4)}
            assert fresh == {b"a", b"b"}, "without the cookie: the usual round robin"
