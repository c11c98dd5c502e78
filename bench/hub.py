"""Benchmark of the hub (issue 8): N simulated agents on one hub; time for a revision to be
acknowledged by all, the hub's CPU while the agents only heartbeat, and its RSS.

Usage: .venv/bin/python bench/hub.py [--agents 200] [--revisions 5] [--idle 10] [--db URL]

The hub runs as `devmesh hub serve` (SQLite in a temp folder unless --db); the agents are asyncio
WebSocket clients speaking the session protocol (docs/hub.md), enrolled through the API, heartbeating
every --heartbeat seconds. Prints medians; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect

DEVMESH = [sys.executable, "-m", "devmesh"]
READY_TIMEOUT_S = 30.0
ACK_TIMEOUT_S = 60.0
CONNECT_CONCURRENCY = 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(
        urllib.request.Request(base + path, data, headers, method=method), timeout=30
    ) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


class SimAgent:
    def __init__(self, url: str, agent_id: str, credential: str, heartbeat_s: float) -> None:
        self.url, self.agent_id, self.credential, self.heartbeat_s = url, agent_id, credential, heartbeat_s
        self.revision: str | None = None
        self.seq = 0
        self.connection: ClientConnection | None = None
        self.applied: dict[str, float] = {}

    async def send(self, kind: str, **fields: Any) -> None:
        assert self.connection is not None
        self.seq += 1
        await self.connection.send(json.dumps({"type": kind, "seq": self.seq, **fields}))

    async def run(self, ready: asyncio.Semaphore) -> None:
        async with ready:
            self.connection = await connect(
                self.url, additional_headers={"Authorization": f"Bearer {self.credential}"}, open_timeout=30
            )
            await self.send("hello", agent_id=self.agent_id, name=self.agent_id[:8], version="bench",
                            revision=None, catalog={"services": [], "mesh": None})  # fmt: skip
        beat = asyncio.create_task(self._heartbeat())
        try:
            async for text in self.connection:
                message = json.loads(text)
                if message["type"] == "revision":
                    self.revision = message["revision"]
                    await self.send("revision_status", revision=self.revision, status="applied", details=None)
                    self.applied[self.revision] = time.monotonic()
        finally:
            beat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.send("heartbeat", revision=self.revision)


async def bench(args: argparse.Namespace, base: str, hub: psutil.Process, token: str) -> None:
    url = base.replace("http", "ws", 1) + "/hub/v1/agent/session"
    agents = []
    for _ in range(args.agents):
        enrollment = call(base, "POST", "/hub/v1/workspaces/bench/enrollment-tokens", {"ttl_s": 600}, token)
        answer = call(
            base,
            "POST",
            "/hub/v1/enroll",
            {"token": enrollment["token"], "name": "a", "hostname": "h", "version": "b"},
        )
        agents.append(SimAgent(url, answer["agent_id"], answer["credential"], args.heartbeat))
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.monotonic()
    tasks = [asyncio.create_task(agent.run(gate)) for agent in agents]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and sum(a.connection is not None for a in agents) < len(agents):
        await asyncio.sleep(0.05)
    print(f"{len(agents)} sessions open in {time.monotonic() - started:.2f} s")

    hub.cpu_percent(None)
    cpu_before = hub.cpu_times()
    await asyncio.sleep(args.idle)
    cpu_after = hub.cpu_times()
    idle_cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / args.idle * 100
    print(
        f"hub CPU with {len(agents)} agents heartbeating every {args.heartbeat:g} s: {idle_cpu:.1f} % of a core"
    )

    rollouts = []
    for index in range(args.revisions):
        document = {"services": {"api": {"port": 8000 + index}}}
        sent = time.monotonic()
        digest = (
            await asyncio.to_thread(
                call, base, "POST", "/hub/v1/workspaces/bench/revisions", {"document": document}, token
            )
        )["revision"]
        limit = time.monotonic() + ACK_TIMEOUT_S
        while time.monotonic() < limit and not all(digest in a.applied for a in agents):
            await asyncio.sleep(0.005)
        acked = [a.applied[digest] - sent for a in agents if digest in a.applied]
        # The hub has recorded every status when its listing says so.
        while time.monotonic() < limit:
            listed = await asyncio.to_thread(
                call, base, "GET", "/hub/v1/workspaces/bench/revisions?limit=1", None, token
            )
            if sum(s["status"] == "applied" for s in listed[0]["agents"]) == len(agents):
                break
            await asyncio.sleep(0.02)
        recorded = time.monotonic() - sent
        rollouts.append(recorded)
        print(f"revision {index + 1}: last agent had it after {max(acked) * 1000:.0f} ms; "
              f"every status recorded after {recorded * 1000:.0f} ms ({len(acked)}/{len(agents)})")  # fmt: skip
    print(f"median time to all acknowledged and recorded: {statistics.median(rollouts) * 1000:.0f} ms")
    print(f"hub RSS: {hub.memory_info().rss / 2**20:.1f} MiB")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--revisions", type=int, default=5)
    parser.add_argument(
        "--idle", type=float, default=10.0, help="Seconds of heartbeats only, for the CPU figure."
    )
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--db", help="The hub's database (default: SQLite in a temp folder).")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="devmesh-hub-bench-"))
    db = args.db or f"sqlite:///{folder / 'hub.db'}"
    password = "bench-password"
    subprocess.run([*DEVMESH, "hub", "user", "add", "bench", "--workspace", "bench", "--role", "admin",
                    "--password-stdin", "--db", db], input=password + "\n", text=True, check=True,
                   capture_output=True)  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([*DEVMESH, "hub", "serve", "--db", db, "--listen", f"127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=(folder / "hub.log").open("wb"))  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                call(base, "GET", "/hub/openapi.json")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"the hub did not start; see {folder / 'hub.log'}") from None
                time.sleep(0.05)
        token = call(base, "POST", "/hub/v1/login", {"username": "bench", "password": password})["token"]
        asyncio.run(bench(args, base, psutil.Process(process.pid), token))
    finally:
        process.terminate()
        process.wait(15)
    print(f"(hub log and database in {folder}; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
