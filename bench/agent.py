"""Benchmark of the agent (issue 2): CLI wall time, time to all-healthy against a shell script, idle RSS.

Usage: .venv/bin/python bench/agent.py [--project examples/shop] [--runs 9]

Prints medians and the ratios to the targets; nothing is asserted. The shell baseline is generated from
the same devmesh.toml: it starts each service (dependencies first, like `depends_on`) with its command,
cwd, env and a free PORT, and waits for each one's health check by polling it every 50 ms, as devmesh's
start-up probe does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVMESH = [sys.executable, "-m", "devmesh"]
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def median_wall_s(argv: list[str], cwd: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def wait_for_line(process: subprocess.Popen[str], marker: str) -> float:
    """Seconds until a line containing `marker` appears on the process's stdout."""
    started = time.perf_counter()
    assert process.stdout is not None
    for line in process.stdout:
        if marker in line:
            return time.perf_counter() - started
        if time.perf_counter() - started > READY_TIMEOUT_S:
            break
    raise RuntimeError(f"{marker!r} never appeared")


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def devmesh_up_s(project: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        [*DEVMESH, "up"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_line(process, "ready:")
        return time.perf_counter() - started
    finally:
        stop(process)


def reload_latency_s(project: Path) -> float:
    """Seconds from saving a config with one more service to that service appearing in the agent."""
    sys.path.insert(0, str(ROOT / "src"))
    from devmesh.agent.client import AdminClient
    from devmesh.agent.paths import StatePaths, read_agent_record, read_token

    paths = StatePaths(project)
    record = read_agent_record(paths)
    assert record is not None
    client = AdminClient(record, read_token(paths))
    config = project / "devmesh.toml"
    original = config.read_text()
    started = time.perf_counter()
    config.write_text(original + '\n[services.bench-extra]\ncommand = "sleep 600"\n')
    try:
        while time.perf_counter() - started < READY_TIMEOUT_S:
            if any(entry["name"] == "bench-extra" for entry in client.get("/api/v1/services")):
                return time.perf_counter() - started
            time.sleep(0.005)
        raise RuntimeError("the new service never appeared")
    finally:
        config.write_text(original)


def shell_baseline(project: Path) -> str:
    """A POSIX shell script starting the project's services the way a careful developer would."""
    sys.path.insert(0, str(ROOT / "src"))
    from devmesh.config import load_config

    config = load_config(project / "devmesh.toml").config
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for dependency in config.services[name].depends_on:
                visit(dependency)
            order.append(name)

    for name in config.services:
        visit(name)
    lines = [
        "#!/bin/sh",
        'wait_http() { until curl -sf -o /dev/null "$1"; do sleep 0.05; done; }',
    ]
    for name in order:
        spec = config.services[name]
        port = spec.port or free_port()
        env = " ".join(
            f"{key}={shlex.quote(value)}" for key, value in {**spec.env, "PORT": str(port)}.items()
        )
        cwd = project / spec.cwd if spec.cwd else project
        command = spec.command if isinstance(spec.command, str) else shlex.join(spec.command or [])
        lines.append(
            f"(cd {shlex.quote(str(cwd))} && env {env} sh -c {shlex.quote(command)}) >/dev/null 2>&1 &"
        )
        if spec.health is not None and spec.health.http is not None:
            lines.append(f"wait_http http://127.0.0.1:{port}{spec.health.http}")
    lines += ["echo ready:", "wait"]
    return "\n".join(lines) + "\n"


def shell_up_s(script: Path, project: Path) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        ["sh", str(script)],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_line(process, "ready:")
        return time.perf_counter() - started
    finally:
        stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT / "examples" / "shop")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        # A copy of the project, with the admin API on a free port, so a running demo is left alone.
        project = Path(scratch) / "project"
        shutil.copytree(args.project.resolve(), project, ignore=shutil.ignore_patterns(".devmesh"))
        (project / "devmesh.local.toml").write_text(
            '[proxy]\nadmin = "127.0.0.1:0"\nlisten = "127.0.0.1:0"\n'
        )
        env = {**os.environ, "NO_COLOR": "1"}
        script = Path(scratch) / "baseline.sh"
        script.write_text(shell_baseline(project))

        help_s = median_wall_s([*DEVMESH, "--help"], project, args.runs * 4)
        # Interleaved, so that the machine's noise falls on both alike.
        devmesh_times: list[float] = []
        shell_times: list[float] = []
        for _ in range(args.runs):
            devmesh_times.append(devmesh_up_s(project, env))
            shell_times.append(shell_up_s(script, project))

        process = subprocess.Popen(
            [*DEVMESH, "up"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            wait_for_line(process, "ready:")
            status_s = median_wall_s([*DEVMESH, "status"], project, args.runs * 4)
            reload_s = reload_latency_s(project)
            time.sleep(5)
            import psutil

            rss_mb = psutil.Process(process.pid).memory_info().rss / 1e6
        finally:
            stop(process)

    up = statistics.median(devmesh_times)
    shell = statistics.median(shell_times)
    print(
        f"devmesh --help          {help_s * 1000:7.0f} ms   (target < 150 ms: {help_s / 0.150:.2f}x of target)"
    )
    print(
        f"devmesh status          {status_s * 1000:7.0f} ms   (target < 150 ms: {status_s / 0.150:.2f}x of target)"
    )
    print(
        f"up to all healthy       {up * 1000:7.0f} ms   shell script {shell * 1000:.0f} ms: ratio {up / shell:.2f}x (target <= 1.1x)"
    )
    print(f"config edit to new service visible {reload_s * 1000:5.0f} ms   (target: within a second)")
    print(f"agent RSS, idle         {rss_mb:7.1f} MB   (target < 60 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
