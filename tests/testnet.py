"""Test hosts in network namespaces (see shared/notes/testnet.md): one bridge in a hub namespace, each
host on it through a veth pair, with 10.213.0.N/24 and fd00:213::N/64. Needs root and iproute2.

Every name carries a per-run prefix, so parallel test runs never collide; `close()` kills what runs in
the namespaces and deletes them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path


def unavailable_reason() -> str | None:
    """Why network-namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (scripts/test installs it when root)"
    probe = f"dmprobe{secrets.token_hex(3)}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        return f"cannot create a network namespace: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _sysctl(namespace: str, path: str, value: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", namespace, "sh", "-c", f"echo {value} > /proc/sys/{path}"],
        check=True,
        capture_output=True,
    )


class NetnsHosts:
    def __init__(self, hosts: int) -> None:
        self.prefix = f"dm{secrets.token_hex(3)}"
        self.hub = f"{self.prefix}hub"
        self.hosts = [f"{self.prefix}h{index}" for index in range(1, hosts + 1)]
        self._processes: list[subprocess.Popen[bytes]] = []

    def ipv4(self, host: int) -> str:
        return f"10.213.0.{host}"

    def ipv6(self, host: int) -> str:
        return f"fd00:213::{host}"

    def start(self) -> NetnsHosts:
        _ip("netns", "add", self.hub)
        _sysctl(self.hub, "net/ipv6/conf/all/disable_ipv6", "1")
        _sysctl(self.hub, "net/ipv6/conf/default/disable_ipv6", "1")
        _ip(
            "-n", self.hub, "link", "add", "br0", "type", "bridge",
            "mcast_snooping", "0", "stp_state", "0", "forward_delay", "0",
        )  # fmt: skip
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts, start=1):
            _ip("netns", "add", host)
            for scope in ("all", "default"):
                _sysctl(host, f"net/ipv6/conf/{scope}/accept_dad", "0")
                _sysctl(host, f"net/ipv6/conf/{scope}/keep_addr_on_down", "1")
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                host,
                "type",
                "veth",
                "peer",
                "name",
                f"p{index}",
                "netns",
                self.hub,
            )
            _ip("-n", self.hub, "link", "set", f"p{index}", "master", "br0", "up")
            _ip("-n", host, "link", "set", "lo", "up")
            _ip("-n", host, "addr", "add", f"{self.ipv4(index)}/24", "dev", "eth0")
            _ip("-n", host, "addr", "add", f"{self.ipv6(index)}/64", "dev", "eth0", "nodad")
            _ip("-n", host, "link", "set", "eth0", "up")
        return self

    def spawn(self, host: int, argv: Sequence[str], *, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.hosts[host - 1], *argv],
                cwd=cwd,
                env={**os.environ, "NO_COLOR": "1"},
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._processes.append(process)
        return process

    def run(self, host: int, argv: Sequence[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.hosts[host - 1], *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def partition(self, host: int) -> None:
        """Pull the host's cable: its port on the bridge goes down (no RST, no FIN: silence)."""
        _ip("-n", self.hub, "link", "set", f"p{host}", "down")

    def heal(self, host: int) -> None:
        _ip("-n", self.hub, "link", "set", f"p{host}", "up")

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        for namespace in [*self.hosts, self.hub]:
            pids = subprocess.run(
                ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
            )
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
