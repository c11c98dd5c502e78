"""A real Kubernetes API for the tests: etcd and kube-apiserver v1.20.2 on loopback.

No package ships kube-apiserver; `scripts/build-kube-apiserver` builds it from Debian's source package and
caches it outside the repository (see ../shared/notes/engines.md). Without the binary or etcd the fixture
skips, saying how to get them. There is no controller-manager, scheduler or kubelet: Endpoints are not
derived from selectors and Pods stay Pending unless a test writes their status itself.

Use: `from engines.kube import kube_cluster` in a test module (the import registers the fixture), and
mark the module `pytest.mark.xdist_group("kubernetes")` so that one worker runs one apiserver.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.typing import Subprotocol

from support import free_port

KUBE_VERSION = "v1.20.2"
ADMIN_TOKEN = "devmesh-test-admin-token"
CONTEXT_NAME = "devmesh-test"  # deliberately not the kubeconfig's current-context: tests pass --context
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KubeCluster:
    """A running apiserver and a kubeconfig file that reaches it through the context `context`."""

    kubeconfig: Path
    context: str
    url: str
    ca_file: Path
    token: str = ADMIN_TOKEN


def kube_apiserver_binary() -> Path | None:
    cache = Path(
        os.environ.get("DEVMESH_TEST_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "devmesh-test"
    )
    binary = cache / f"kube-apiserver-{KUBE_VERSION}"
    return binary if os.access(binary, os.X_OK) else None


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    binary = kube_apiserver_binary()
    if binary is None:
        pytest.skip(
            f"no kube-apiserver {KUBE_VERSION} cached: run scripts/build-kube-apiserver (root, Debian; "
            "scripts/test runs it when root)"
        )
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("no etcd on PATH: apt-get install etcd-server")
    folder = tmp_path_factory.mktemp("kube")
    certs = folder / "certs"
    certs.mkdir()
    _write_service_account_keys(certs)
    (certs / "tokens.csv").write_text(f'{ADMIN_TOKEN},devmesh-admin,1,"system:masters"\n', encoding="utf-8")

    etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            _start(
                [
                    etcd,
                    "--name=devmesh-test",
                    f"--data-dir={folder / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                    f"--initial-cluster=devmesh-test=http://127.0.0.1:{etcd_peer_port}",
                    "--unsafe-no-fsync",
                ],
                folder / "etcd.log",
            )
        )
        processes.append(
            _start(
                [
                    str(binary),
                    f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    "--insecure-port=0",
                    f"--cert-dir={certs}",
                    "--service-cluster-ip-range=10.96.0.0/16",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={certs / 'sa.pub'}",
                    f"--service-account-signing-key-file={certs / 'sa.key'}",
                    f"--token-auth-file={certs / 'tokens.csv'}",
                    "--authorization-mode=RBAC",
                    "--disable-admission-plugins=ServiceAccount",
                    "--endpoint-reconciler-type=none",
                    # The tests' fake kubelet answers on loopback, by IP: no host names to resolve.
                    "--kubelet-preferred-address-types=InternalIP",
                    # Services are watched straight from etcd, which compacts old revisions every few
                    # seconds: a watch resumed from an old resourceVersion gets 410 Gone, as it does on a
                    # busy cluster after minutes.
                    "--watch-cache-sizes=services#0",
                    "--etcd-compaction-interval=2s",
                ],
                folder / "kube-apiserver.log",
            )
        )
        url = f"https://127.0.0.1:{api_port}"
        ca_file = certs / "apiserver.crt"
        _wait_ready(url, ca_file, processes, folder)
        kubeconfig = folder / "kubeconfig"
        kubeconfig.write_text(_kubeconfig(url, ca_file), encoding="utf-8")
        yield KubeCluster(kubeconfig=kubeconfig, context=CONTEXT_NAME, url=url, ca_file=ca_file)
    finally:
        for process in reversed(processes):
            _stop(process)


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


def _wait_ready(url: str, ca_file: Path, processes: list[subprocess.Popen[bytes]], folder: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited ({process.returncode}); logs in {folder}")
        if ca_file.exists():
            request = urllib.request.Request(
                f"{url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            try:
                context = ssl.create_default_context(cafile=str(ca_file))
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except (OSError, ssl.SSLError, urllib.error.URLError) as error:
                last = str(error)
        time.sleep(0.1)
    raise RuntimeError(f"kube-apiserver not ready after {READY_TIMEOUT_S}s ({last}); logs in {folder}")


def _write_service_account_keys(certs: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (certs / "sa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (certs / "sa.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _kubeconfig(url: str, ca_file: Path) -> str:
    # Two contexts, and the current one is not ours: only an explicit --context reaches the cluster.
    return f"""apiVersion: v1
kind: Config
clusters:
- name: devmesh-test
  cluster:
    server: {url}
    certificate-authority: {ca_file}
- name: nowhere
  cluster:
    server: https://127.0.0.1:1
users:
- name: devmesh-admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: {CONTEXT_NAME}
  context:
    cluster: devmesh-test
    user: devmesh-admin
    namespace: default
- name: nowhere
  context:
    cluster: nowhere
    user: devmesh-admin
current-context: nowhere
"""


class FakeKubelet:
    """A kubelet's port-forward endpoint and nothing else, so that the real apiserver has a node to proxy
    `pods/portforward` to: TLS (the apiserver does not verify kubelets unless told to), the websocket
    protocol `v4.channel.k8s.io` that kubectl and the Python client speak, and each forwarded port
    connected to `127.0.0.1:<backend_ports[port]>` on this machine.

    The wire format is the kubelet's (pkg/kubelet/cri/streaming/portforward/websocket.go): channel 2i
    carries port i's data and 2i+1 its errors; each channel's first frame is the port number, 2 bytes
    little-endian; every frame starts with its channel byte.
    """

    PROTOCOL = "v4.channel.k8s.io"

    def __init__(self, folder: Path, backend_ports: dict[int, int]) -> None:
        self.backend_ports = backend_ports
        self.requests: list[str] = []  # the paths the apiserver asked for, e.g. /portForward/ns/pod?ports=80
        self.port = 0
        self._folder = folder
        self._server: Any = None

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*_self_signed_certificate(self._folder))
        self._server = await serve(
            self._serve,
            "127.0.0.1",
            0,
            ssl=context,
            subprotocols=[Subprotocol(self.PROTOCOL)],
            compression=None,
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, connection: Any) -> None:
        import asyncio
        from urllib.parse import parse_qs, urlsplit

        from websockets.exceptions import ConnectionClosed

        path = connection.request.path
        self.requests.append(path)
        # The apiserver turns the client's `ports=80,443` into the kubelet's `port=80&port=443`.
        query = parse_qs(urlsplit(path).query)
        ports = [
            int(port) for value in query.get("port", []) + query.get("ports", []) for port in value.split(",")
        ]
        streams: dict[int, asyncio.StreamWriter] = {}
        pumps: list[asyncio.Task[None]] = []
        for index, port in enumerate(ports):
            prefix = port.to_bytes(2, "little")
            await connection.send(bytes([2 * index]) + prefix)
            await connection.send(bytes([2 * index + 1]) + prefix)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.backend_ports[port])
            except (OSError, KeyError) as error:
                message = f"error forwarding port {port}: {error}".encode()
                await connection.send(bytes([2 * index + 1]) + message)
                continue
            streams[2 * index] = writer
            pumps.append(asyncio.create_task(self._pump(reader, connection, 2 * index)))
        try:
            async for frame in connection:
                if isinstance(frame, bytes) and frame and frame[0] in streams:
                    streams[frame[0]].write(frame[1:])
                    await streams[frame[0]].drain()
        except ConnectionClosed:
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in streams.values():
                writer.close()

    @staticmethod
    async def _pump(reader: Any, connection: Any, channel: int) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while chunk := await reader.read(65536):
                await connection.send(bytes([channel]) + chunk)
            await connection.close()  # the backend closed: so does the kubelet's stream
        except ConnectionClosed:
            pass


def _self_signed_certificate(folder: Path) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubelet")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "kubelet.crt", folder / "kubelet.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_file), str(key_file)
