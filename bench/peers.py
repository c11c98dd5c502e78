"""Peers benchmark: how fast a teammate's service becomes routable, how fast a dead one leaves, and what
the extra hop costs. Prints the figures and their ratios to the targets of the peers issue.

Usage: .venv/bin/python bench/peers.py [--duration 5] [--connections 50] [--runs 3]

- join: from `devmesh up` of the offering agent (alice) to its service answering 200 through the other
  agent (bob), found by mDNS on 127.0.0.1 (target < 2 s);
- leave: from SIGKILL of alice's agent to bob answering 404 for the service (target < 5 s);
- hop: requests/s of wrk through bob -> alice's mesh port -> the service, as a ratio to wrk through
  alice's own proxy -> the service (target >= 0.5). The service is nginx returning a 3-byte body.

Needs wrk and nginx, as bench/proxy.py does; everything on 127.0.0.1; every child stopped in `finally`.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import (
    BACKEND_HTTP,
    Child,
    find_nginx,
    find_tool,
    free_port,
    parse_wrk,
    start_nginx,
)

ROOT = Path(__file__).resolve().parent.parent
DEVMESH = [sys.executable, "-m", "devmesh"]
TARGETS = {"join_s_max": 2.0, "leave_s_max": 5.0, "hop_ratio_min": 0.5}

AGENT = """\
[mesh]
name = "{mesh}"
secret = "bench-secret"
share = {share}
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
mesh = "127.0.0.1:{mesh_port}"
access_log = "json"
[peers]
interfaces = ["127.0.0.1"]
{services}
"""


def agent(directory: Path, *, mesh: str, share: bool, listen: int, services: str) -> Child:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "devmesh.toml").write_text(
        AGENT.format(
            mesh=mesh,
            share="true" if share else "false",
            listen=listen,
            mesh_port=free_port(),
            services=services,
        )
    )
    return Child.start(directory.name, [*DEVMESH, "up"], directory, directory / "agent.log")


def status_of(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ok", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def wait_status(port: int, host: str, wanted: set[int], timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if status_of(port, host) in wanted:
            return time.monotonic() - started
        time.sleep(0.01)
    raise TimeoutError(f"no {sorted(wanted)} from 127.0.0.1:{port} ({host}) in {timeout_s:g} s")


def wrk_rps(wrk: str, port: int, host: str, seconds: float, connections: int) -> float:
    import subprocess

    done = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-H",
            f"Host: {host}",
            f"http://127.0.0.1:{port}/ok",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    run = parse_wrk(done.stdout)
    if run.non_2xx or any(run.socket_errors.values()):
        raise RuntimeError(f"wrk saw errors: {done.stdout}")
    return run.rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    wrk = find_tool("wrk")
    if wrk is None:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2
    nginx, _nginx_version = find_nginx("auto")
    children: list[Child] = []
    joins: list[float] = []
    leaves: list[float] = []
    local_rps: list[float] = []
    peer_rps: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="devmesh-bench-peers-") as scratch_name:
            scratch = Path(scratch_name)
            backend_port = free_port()
            backend = start_nginx(
                nginx,
                "backend",
                scratch / "backend",
                BACKEND_HTTP.format(dir=scratch / "backend", port=backend_port),
            )
            children.append(backend)
            wait_status(backend_port, "x", {200}, 10)
            service = f'[services.api]\nport = {backend_port}\nversion = "1.0.0"\n'
            for run in range(args.runs):
                mesh = f"bench-{secrets.token_hex(4)}"  # a fresh mesh per run: no earlier agent interferes
                bob_listen, alice_listen = free_port(), free_port()
                bob = agent(scratch / f"bob{run}", mesh=mesh, share=False, listen=bob_listen, services="")
                children.append(bob)
                wait_status(bob_listen, "api.localhost", {404}, 20)
                alice = agent(
                    scratch / f"alice{run}", mesh=mesh, share=True, listen=alice_listen, services=service
                )
                children.append(alice)
                joins.append(wait_status(bob_listen, "api.localhost", {200}, 20))
                wait_status(alice_listen, "api.localhost", {200}, 20)
                local_rps.append(wrk_rps(wrk, alice_listen, "api.localhost", args.duration, args.connections))
                peer_rps.append(wrk_rps(wrk, bob_listen, "api.localhost", args.duration, args.connections))
                alice.process.send_signal(signal.SIGKILL)
                leaves.append(wait_status(bob_listen, "api.localhost", {404}, 20))
                alice.stop()
                bob.stop()
                print(
                    f"run {run + 1}/{args.runs}: join {joins[-1]:.2f} s, leave {leaves[-1]:.2f} s, "
                    f"local {local_rps[-1]:,.0f} req/s, through a peer {peer_rps[-1]:,.0f} req/s",
                    flush=True,
                )
    finally:
        for child in reversed(children):
            child.stop()
    join, leave = statistics.median(joins), statistics.median(leaves)
    ratio = statistics.median(p / local for p, local in zip(peer_rps, local_rps, strict=True))
    print()
    print(
        f"peer routable after its up     {join:5.2f} s   (target < {TARGETS['join_s_max']:g} s: {'met' if join < TARGETS['join_s_max'] else 'MISSED'})"
    )
    print(
        f"killed peer out of routing     {leave:5.2f} s   (target < {TARGETS['leave_s_max']:g} s: {'met' if leave < TARGETS['leave_s_max'] else 'MISSED'})"
    )
    print(
        f"agent -> peer agent -> service {statistics.median(peer_rps):,.0f} req/s, agent -> local service "
        f"{statistics.median(local_rps):,.0f} req/s: {ratio:.2f}x (target >= {TARGETS['hop_ratio_min']:g}: "
        f"{'met' if ratio >= TARGETS['hop_ratio_min'] else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
