"""`devmesh install` against the real kernel and real resolvers, each in a sandbox.

- A bind-mounted hosts file (what /etc/hosts is in Docker): renaming over it really fails with EBUSY,
  and devmesh rewrites it in place.
- A read-only mount: even root gets a refusal, and nothing is written.
- Real resolution: in a private mount namespace a temp hosts file is bind-mounted over /etc/hosts
  (the machine's own file is never written; the test checks it is unchanged), devmesh installs into
  it, and `getent hosts` (glibc's NSS, as every program resolves) answers with 127.0.0.1.
- The dnsmasq snippet, loaded by a real dnsmasq on a free port, answers a wildcard name.

Everything here needs root and `unshare` (or dnsmasq); without them the tests skip and say why.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import Project, free_port

CONFIG = """
[mesh]
name = "shop"
domain = "shop.test"

[services.api]
port = 3001

[services.tenants]
port = 3002
hosts = ["*.tenant"]
"""
USER_HOSTS = b"127.0.0.1 localhost\n# the user's own line\n10.0.0.5 nas.lan\n"

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_namespaces = pytest.mark.skipif(
    not (sys.platform == "linux" and IS_ROOT and shutil.which("unshare")),
    reason="needs Linux, root and unshare (for a private mount namespace)",
)


def sandbox_env(root: Path, hosts: Path) -> dict[str, str]:
    return {
        **os.environ,
        "NO_COLOR": "1",
        "DEVMESH_HOSTS_FILE": str(hosts),
        "DEVMESH_DNSMASQ_DIR": str(root / "dnsmasq.d"),
        "DEVMESH_RESOLVED_DIR": str(root / "resolved.conf.d"),
        "DEVMESH_RESOLVER_DIR": str(root / "resolver"),
    }


def in_namespace(script: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a private mount namespace: its mounts vanish with it."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def devmesh_line(*args: str) -> str:
    return shlex.join([sys.executable, "-m", "devmesh", *args])


@needs_namespaces
def test_a_bind_mounted_hosts_file_is_rewritten_in_place(tmp_path: Path, project: Project) -> None:
    project.write(CONFIG)
    (tmp_path / "dnsmasq.d").mkdir()
    etc = tmp_path / "etc"
    etc.mkdir()
    hosts = etc / "hosts"
    hosts.write_bytes(b"placeholder under the mount\n")
    mounted = tmp_path / "container-hosts"
    mounted.write_bytes(USER_HOSTS)

    result = in_namespace(
        f"mount --bind {shlex.quote(str(mounted))} {shlex.quote(str(hosts))}\n"
        f"{devmesh_line('install', '--auto', '--yes')}",
        cwd=project.root,
        env=sandbox_env(tmp_path, hosts),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"rewritten in place {hosts}" in result.stdout
    content = mounted.read_bytes()  # the bind mount's source: what the container's /etc/hosts is
    assert content.startswith(USER_HOSTS)
    assert b"127.0.0.1 shop.test api.shop.test\n" in content
    assert (etc / "hosts.devmesh.bak").read_bytes() == USER_HOSTS
    assert hosts.read_bytes() == b"placeholder under the mount\n"  # untouched under the mount
    assert sorted(path.name for path in etc.iterdir()) == ["hosts", "hosts.devmesh.bak"]


@needs_namespaces
def test_a_read_only_hosts_file_is_refused_even_for_root(tmp_path: Path, project: Project) -> None:
    project.write(CONFIG)
    (tmp_path / "dnsmasq.d").mkdir()
    etc = tmp_path / "etc"
    etc.mkdir()
    hosts = etc / "hosts"
    hosts.write_bytes(USER_HOSTS)
    folder = shlex.quote(str(etc))

    result = in_namespace(
        f"mount --bind {folder} {folder}\nmount -o remount,bind,ro {folder}\n"
        f"{devmesh_line('install', '--auto', '--yes')}",
        cwd=project.root,
        env=sandbox_env(tmp_path, hosts),
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"devmesh: cannot write: {hosts} is not writable by this user" in result.stderr
    assert "nothing was written" in result.stderr
    assert "sudo" not in result.stderr  # root already: sudo would not help on a read-only mount
    assert hosts.read_bytes() == USER_HOSTS
    assert sorted(path.name for path in etc.iterdir()) == ["hosts"]
    assert list((tmp_path / "dnsmasq.d").iterdir()) == []  # nothing at all was written


@needs_namespaces
@pytest.mark.skipif(not shutil.which("getent"), reason="needs getent (glibc)")
def test_installed_names_resolve_through_the_system_resolver(tmp_path: Path, project: Project) -> None:
    project.write(CONFIG)
    (tmp_path / "dnsmasq.d").mkdir()
    real_hosts = Path("/etc/hosts").read_bytes()
    private = tmp_path / "private-hosts"
    private.write_bytes(real_hosts.rstrip(b"\n") + b"\n# devmesh-test-namespace\n")
    env = sandbox_env(tmp_path, Path("/etc/hosts"))

    result = in_namespace(
        f"mount --bind {shlex.quote(str(private))} /etc/hosts\n"
        # The guard: devmesh runs only if /etc/hosts is now the private copy.
        "grep -q '^# devmesh-test-namespace$' /etc/hosts || exit 97\n"
        "getent hosts api.shop.test && exit 98\n"
        f"{devmesh_line('install', '--auto', '--yes')}\n"
        "getent hosts api.shop.test\n"
        "getent hosts shop.test\n",
        cwd=project.root,
        env=env,
    )

    assert Path("/etc/hosts").read_bytes() == real_hosts
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rewritten in place /etc/hosts" in result.stdout  # a bind mount, as in a container
    # getent prints the address, the line's first name and its aliases: one line per lookup.
    api, root = [line.split() for line in result.stdout.splitlines() if line.startswith("127.0.0.1 ")]
    assert "api.shop.test" in api[1:]
    assert "shop.test" in root[1:]
    assert b"127.0.0.1 shop.test api.shop.test" in private.read_bytes()


def dns_query(port: int, name: str) -> tuple[int, list[str]]:
    """(rcode, A records) for `name` from a DNS server on 127.0.0.1:port."""
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", 0x2A2A, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(1.0)
        client.sendto(packet, ("127.0.0.1", port))
        reply, _ = client.recvfrom(4096)
    _, flags, _, answers, _, _ = struct.unpack(">HHHHHH", reply[:12])
    offset = 12 + len(question) + 4
    addresses = []
    for _ in range(answers):
        if reply[offset] & 0xC0 == 0xC0:
            offset += 2
        else:
            while reply[offset]:
                offset += reply[offset] + 1
            offset += 1
        record_type, _, _, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if record_type == 1:
            addresses.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return flags & 0xF, addresses


@pytest.mark.skipif(
    not (IS_ROOT and shutil.which("dnsmasq", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")),
    reason="needs dnsmasq, run as root (it starts as root and drops privileges)",
)
def test_the_dnsmasq_snippet_answers_wildcard_names(tmp_path: Path, project: Project) -> None:
    project.write(CONFIG)
    (tmp_path / "dnsmasq.d").mkdir()
    hosts = tmp_path / "hosts"
    hosts.write_bytes(USER_HOSTS)
    installed = subprocess.run(
        [sys.executable, "-m", "devmesh", "install", "--auto", "--yes"],
        cwd=project.root,
        env=sandbox_env(tmp_path, hosts),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    snippet = tmp_path / "dnsmasq.d" / "devmesh-shop.conf"
    port = free_port()
    dnsmasq = shutil.which("dnsmasq", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert dnsmasq is not None
    # What Ubuntu has on port 53: systemd-resolved's stub on 127.0.0.53 (UDP and TCP). A dnsmasq that
    # binds the wildcard address fails beside it; the snippet's listen-address and bind-interfaces make
    # it bind 127.0.0.1 alone. Only the snippet: no upstream servers, no /etc/hosts, a free port.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stub_udp,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stub_tcp,
    ):
        stub_udp.bind(("127.0.0.53", port))
        stub_tcp.bind(("127.0.0.53", port))
        stub_tcp.listen()
        options = ["--no-resolv", "--no-hosts", f"--port={port}"]
        server = subprocess.Popen(
            [dnsmasq, "--keep-in-foreground", "--pid-file=", f"--conf-file={snippet}", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            answer: tuple[int, list[str]] | None = None
            deadline = time.monotonic() + 10
            while answer is None and time.monotonic() < deadline:
                try:
                    answer = dns_query(port, "acme.tenant.shop.test")
                except (TimeoutError, ConnectionRefusedError):
                    assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert answer == (0, ["127.0.0.1"])
            assert dns_query(port, "shop.test") == (0, ["127.0.0.1"])
            assert "127.0.0.1" not in dns_query(port, "example.org")[1]
        finally:
            server.terminate()
            server.wait(timeout=10)
            if server.stdout:
                server.stdout.close()
