"""A real Docker-compatible Engine API for tests: rootful podman serving on a private socket.

`podman system service` speaks the Docker Engine API (v1.41), so the `docker` client, the Docker CLI and
podman's own CLI all work against it. Everything it keeps lives in one temp folder: a private
containers.conf (CONTAINERS_CONF) and storage.conf (CONTAINERS_STORAGE_CONF) point its storage, run
state, network configs, locks and event log there, so nothing under /etc or /var/lib is touched
(/work/shared/notes/engines.md has the facts these settings come from). The image is built from
busybox-static with `podman import`: no registry, no network.

One engine serves the whole pytest session (it starts in ~0.1 s, the image is imported once) however many
test modules use the fixtures; it is stopped, by pid, when the session ends. Use it in a test module with

    pytest_plugins = ["engines.podman"]  # the fixtures below
    if TYPE_CHECKING:
        from engines.podman import PodmanEngine  # only for annotations: a plain import comes too early

`podman` (per test) removes every container when the test ends; `podman_engine` is the session's engine.
Both skip the test, saying why, when podman is missing or the tests don't run as root. What the engine
gives: `url` (DOCKER_HOST), `env` (for child processes: DOCKER_HOST, CONTAINER_HOST for podman's CLI and
podman-compose, CONTAINERS_CONF, CONTAINERS_STORAGE_CONF), `image`, `client()`, `podman(*args)`,
`run_http(name, labels=...)`.

Left behind on the host, as by any rootful podman: empty runtime folders /run/containers, /run/runc and
the /run/netns mount point.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

IMAGE = "localhost/devmesh-test-busybox:1"
CONTAINER_HTTP_PORT = 8080  # where httpd listens inside the container
SERVICE_READY_TIMEOUT_S = 10.0
HTTP_READY_TIMEOUT_S = 10.0
SERVICE_STOP_TIMEOUT_S = 10.0
# busybox applets the image links to /bin/busybox (it is all one static binary).
APPLETS = ("sh", "httpd", "mkdir", "echo", "cat", "sleep", "ls", "true", "env", "nc", "wget")
# `busybox httpd` as PID 1 ignores SIGTERM (stop would wait 10 s for the KILL): a shell that traps it.
HTTPD_SCRIPT = (
    "trap 'exit 0' TERM; mkdir -p /www; echo \"$BODY\" > /www/index.html; "
    f"httpd -f -p {CONTAINER_HTTP_PORT} -h /www & wait"
)


class _Process(Protocol):
    def poll(self) -> int | None: ...
    def send_signal(self, signum: int) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...


@dataclass
class PodmanEngine:
    """A running `podman system service`, its private folder and the test image."""

    root: Path
    process: _Process
    image: str = IMAGE
    _clients: list[docker.DockerClient] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        return self.root / "podman.sock"

    @property
    def url(self) -> str:
        """The Docker Engine API endpoint, as DOCKER_HOST wants it."""
        return f"unix://{self.socket_path}"

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to reach this engine: the Docker client and CLI (DOCKER_HOST),
        podman's CLI in remote mode (CONTAINER_HOST, as podman-compose runs it) and, for podman run
        locally, the private config and storage."""
        return {
            "DOCKER_HOST": self.url,
            "CONTAINER_HOST": self.url,
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
        }

    def client(self) -> docker.DockerClient:
        """A `docker` client on this engine, closed when the session ends."""
        import docker

        client = docker.DockerClient(base_url=self.url, timeout=30)
        self._clients.append(client)
        return client

    def podman(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the podman CLI against this engine; raises with its output when it fails."""
        result = subprocess.run(
            ["podman", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def run_http(
        self,
        name: str,
        *,
        port: int | None = None,
        labels: Mapping[str, str] | None = None,
        body: str | None = None,
        wait: bool = True,
    ) -> HttpContainer:
        """Start a container whose busybox httpd answers `body` (default: its name) on 127.0.0.1:`port`
        (default: a free port), published with slirp4netns so nothing changes on the host's network."""
        from support import free_port

        host_port = port if port is not None else free_port()
        container = self.client().containers.run(
            self.image,
            ["/bin/sh", "-c", HTTPD_SCRIPT],
            name=name,
            detach=True,
            environment={"BODY": body if body is not None else name},
            labels=dict(labels or {}),
            network_mode="slirp4netns",
            ports={f"{CONTAINER_HTTP_PORT}/tcp": ("127.0.0.1", host_port)},
        )
        started = HttpContainer(container, host_port)
        if wait:
            _wait_until_connectable(host_port, HTTP_READY_TIMEOUT_S, what=f"container {name}")
        return started

    def remove_all(self) -> None:
        """Remove every container of this engine (its storage holds nothing else)."""
        self.podman("rm", "--all", "--force", "--time", "0")

    def _remove_all_locally(self) -> None:
        """As `remove_all`, without the service: podman on the storage itself (the service may be gone)."""
        env = {**os.environ, **self.env}
        env.pop("CONTAINER_HOST")
        subprocess.run(
            ["podman", "rm", "--all", "--force", "--time", "0"],
            env=env,
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def close(self) -> None:
        """Remove the containers, stop the service by its pid, unmount and delete the folder."""
        with contextlib.suppress(Exception):
            self._remove_all_locally()
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(SERVICE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # c/storage bind-mounts its overlay folder onto itself; what is mounted must go before the folder.
        for mount_point in sorted(_mounts_under(self.root), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mount_point], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class HttpContainer:
    container: Container
    port: int  # the published host port, on 127.0.0.1

    @property
    def name(self) -> str:
        return str(self.container.name)

    def remove(self) -> None:
        self.container.remove(force=True)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        points = [line.split()[4] for line in handle]
    return [point for point in points if point == prefix or point.startswith(prefix + "/")]


def _wait_until_connectable(port: int, timeout: float, *, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not accept connections on 127.0.0.1:{port} within {timeout} s")


def _write_configs(root: Path) -> None:
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = 32768 if nproc_hard == resource.RLIM_INFINITY else min(nproc_hard, 32768)
    if nofile == resource.RLIM_INFINITY:
        nofile = 1048576
    (root / "containers.conf").write_text(
        f"""\
[containers]
# podman's defaults exceed what this machine lets a process set (setrlimit: Operation not permitted).
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]

[engine]
runtime = "runc"                 # crun refuses the hybrid cgroup layout here
cgroup_manager = "cgroupfs"      # no systemd
events_logger = "file"
events_logfile_path = "{root}/events.log"
lock_type = "file"               # not the machine-wide /dev/shm/libpod_lock
tmp_dir = "{root}/tmp"
static_dir = "{root}/storage/libpod"
volume_path = "{root}/storage/volumes"

[network]
network_config_dir = "{root}/networks"
""",
        encoding="utf-8",
    )
    (root / "storage.conf").write_text(
        f"""\
[storage]
driver = "overlay"
graphroot = "{root}/storage"
runroot = "{root}/run"
""",
        encoding="utf-8",
    )


def _import_image(root: Path, env: Mapping[str, str]) -> None:
    """The test image: /bin/busybox and its applets' links, imported from a tarball.

    `podman import` keeps a blob-info cache in /var/lib/containers/cache whatever the config says, so it
    runs in a private mount namespace with a tmpfs over /var/lib: the cache is thrown away with it.
    """
    busybox = shutil.which("busybox")
    assert busybox is not None
    tarball = root / "image.tar"
    with tarfile.open(tarball, "w") as archive:
        archive.add(busybox, arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            archive.addfile(link)
        for folder in ("tmp", "www"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777
            archive.addfile(info)
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs devmesh-test /var/lib && exec podman import --change "$1" "$2" "$3"',
            "import",
            'CMD ["/bin/sh"]',
            str(tarball),
            IMAGE,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"podman import failed ({result.returncode}):\n{result.stderr}")


ROOT_PREFIX = "devmesh-podman-"
OWNER_FILE = "owner"  # "<pid of the test process> <pid of the service>"


def reap_stale_engines() -> None:
    """Stop and delete engines whose test process died without closing them (killed by a timeout):
    their service runs on (it has its own session) and their folder keeps a mount."""
    for root in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        try:
            owner, service = (int(pid) for pid in (root / OWNER_FILE).read_text().split())
        except (OSError, ValueError):
            continue  # still starting, or not one of ours
        if _alive(owner):
            continue
        try:
            command = Path(f"/proc/{service}/cmdline").read_bytes().split(b"\0")
        except OSError:
            command = []
        if f"unix://{root}/podman.sock".encode() in command:
            PodmanEngine(root, _Orphan(service)).close()
        else:
            PodmanEngine(root, _Orphan(None)).close()


class _Orphan:
    """Stands in for the Popen of a service this process did not start: `close()` stops it by pid."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        return None if self.pid is not None and _alive(self.pid) else 0

    def send_signal(self, signum: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else SERVICE_STOP_TIMEOUT_S)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("podman system service", timeout or 0)
            time.sleep(0.05)
        return 0

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_engine() -> PodmanEngine:
    """Start a private podman service with the test image; the caller must `close()` it."""
    reap_stale_engines()
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    process: subprocess.Popen[bytes] | None = None
    try:
        _write_configs(root)
        env = {
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        }
        _import_image(root, env)
        log = (root / "service.log").open("wb")
        with log:
            process = subprocess.Popen(
                ["podman", "system", "service", "--time=0", f"unix://{root}/podman.sock"],
                env={**{k: v for k, v in os.environ.items() if k != "CONTAINER_HOST"}, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (root / OWNER_FILE).write_text(f"{os.getpid()} {process.pid}\n")
        engine = PodmanEngine(root, process)
        _ping_until_ready(engine)
        return engine
    except BaseException:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)
        raise


def _ping_until_ready(engine: PodmanEngine) -> None:
    deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
    client = engine.client()
    while True:
        try:
            if client.ping():
                return
        except Exception:
            if time.monotonic() > deadline or engine.process.poll() is not None:
                log = (engine.root / "service.log").read_text(errors="replace")
                raise RuntimeError(f"the podman service did not start within the deadline:\n{log}") from None
        time.sleep(0.02)


def why_unavailable() -> str | None:
    """Why the engine cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc busybox-static)"
    if os.geteuid() != 0:
        return "podman runs rootful here, and these tests don't run as root"
    for tool in ("runc", "busybox", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman runc busybox-static)"
    return None


_shared: dict[str, Any] = {}


@pytest.fixture(scope="session")
def podman_engine(request: pytest.FixtureRequest) -> PodmanEngine:
    """The session's podman engine, started on first use and stopped when the session ends."""
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    # A fixture imported into several modules is a separate fixture in each: keep one engine per process.
    if "error" in _shared:
        raise RuntimeError("the podman engine failed to start earlier in this session") from _shared["error"]
    if "engine" not in _shared:
        try:
            engine = start_engine()
        except Exception as error:
            _shared["error"] = error
            raise
        _shared["engine"] = engine
        request.config.add_cleanup(engine.close)
    engine = _shared["engine"]
    assert isinstance(engine, PodmanEngine)
    return engine


@pytest.fixture
def podman(podman_engine: PodmanEngine) -> Iterator[PodmanEngine]:
    """The session's engine, with no container left when the test ends."""
    yield podman_engine
    podman_engine.remove_all()
