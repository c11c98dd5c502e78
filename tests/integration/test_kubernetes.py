"""Kubernetes discovery and `devmesh k8s sync` against a real kube-apiserver (tests/engines/kube.py).

The data path is real too, except the kubelet: there is none here, so the test registers a Node whose
kubelet endpoint is a `FakeKubelet` on loopback, and the real API server proxies `pods/portforward` to it,
as it would to a kubelet. The fake kubelet connects each forwarded port to an HTTP server in the test.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from devmesh.discovery.base import DiscoveredService
from devmesh.discovery.kubernetes import KubernetesSource
from devmesh.mesh.snapshot import Origin
from devmesh.supervisor.logs import LogSink
from engines import kube
from engines.kube import FakeKubelet, KubeCluster
from support import Project, devmesh, free_port, http, running_agent, wait_for

kube_cluster = kube.kube_cluster  # the session's apiserver (a module attribute is how pytest finds it)

pytestmark = [pytest.mark.xdist_group("kubernetes"), pytest.mark.timeout(120)]

WAIT_S = 15.0


@pytest.fixture
def core(kube_cluster: KubeCluster) -> Iterator[Any]:
    from kubernetes import client, config

    api_client = config.new_client_from_config(
        config_file=str(kube_cluster.kubeconfig), context=kube_cluster.context, persist_config=False
    )
    yield client.CoreV1Api(api_client)
    api_client.close()


@pytest.fixture
def namespace(core: Any) -> str:
    """A namespace of the test's own (never deleted: without a controller-manager it would stay
    Terminating; the cluster goes away with the session)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}}, _preload_content=False).release_conn()
    return name


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[LogSink]:
    sink = LogSink(tmp_path / "logs", terminal=io.StringIO())
    yield sink
    sink.close()


class Reports:
    """Every set the source reported, and a bounded wait for the next one that satisfies a condition."""

    def __init__(self) -> None:
        self.sets: list[list[DiscoveredService]] = []

    def __call__(self, found: Sequence[DiscoveredService]) -> None:
        self.sets.append(list(found))

    @property
    def latest(self) -> dict[str, DiscoveredService]:
        return {service.name: service for service in (self.sets[-1] if self.sets else [])}

    async def until(
        self, condition: Callable[[dict[str, DiscoveredService]], bool], what: str
    ) -> dict[str, DiscoveredService]:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            if self.sets and condition(self.latest):
                return self.latest
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; reports: {self.sets}")


@pytest.fixture
async def running(
    kube_cluster: KubeCluster, namespace: str, logs: LogSink
) -> AsyncIterator[tuple[KubernetesSource, Reports]]:
    # A short server-side watch timeout: the watch is resumed several times during a test.
    source = KubernetesSource(
        context=kube_cluster.context,
        namespace=namespace,
        kubeconfig=str(kube_cluster.kubeconfig),
        logs=logs,
        watch_timeout_s=2,
    )
    reports = Reports()
    task = asyncio.create_task(source.run(reports))
    yield source, reports
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def service(name: str, ports: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": ports, "selector": {"app": name}, **extra.pop("spec", {})}
    return {"metadata": {"name": name, **extra}, "spec": spec}


def delete_service(core: Any, namespace: str, name: str) -> None:
    # Client 37 mis-parses the Status a 1.20 server answers a Service DELETE with: read it raw.
    core.delete_namespaced_service(name, namespace, _preload_content=False).release_conn()


async def test_the_source_follows_services_as_they_come_change_and_go(
    core: Any, namespace: str, running: tuple[KubernetesSource, Reports]
) -> None:
    core.create_namespaced_service(
        namespace,
        service(
            "web",
            [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "metrics", "port": 9090}],
            labels={"app.kubernetes.io/version": "1.4.2"},
        ),
        _preload_content=False,
    ).release_conn()
    source, reports = running
    assert source.origin is Origin.KUBERNETES
    found = await reports.until(lambda latest: {"web", "web-metrics"} <= set(latest), "web's two ports")
    assert found["web"].version == "1.4.2"
    assert found["web"].detail == f"Service {namespace}/web port 80"
    assert found["web"].port != found["web-metrics"].port
    # No pod at all: not ready, saying why (devmesh never connects to the listener to find out).
    assert (found["web"].ready, found["web"].ready_detail) == (
        False,
        f"no ready pod behind {namespace}/web (pods app=web)",
    )
    web_port = found["web"].port
    with socket.create_connection(("127.0.0.1", web_port), timeout=5):
        pass  # listening on loopback

    # Created after the list: only the watch can see it (after at least one watch timeout, too).
    await asyncio.sleep(2.5)
    core.create_namespaced_service(
        namespace,
        service("api", [{"name": "api", "port": 3000}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        _preload_content=False,
    ).release_conn()
    core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "mail"}, "spec": {"type": "ExternalName", "externalName": "mail.example.com"}},
        _preload_content=False,
    ).release_conn()
    found = await reports.until(lambda latest: "api" in latest, "the Service created later")
    assert set(found) == {"web", "web-metrics", "api"}  # no UDP port, no ExternalName
    assert found["web"].port == web_port  # stable while the Service exists

    core.patch_namespaced_service(
        "web",
        namespace,
        {"metadata": {"labels": {"app.kubernetes.io/version": "1.5.0"}}},
        _preload_content=False,
    ).release_conn()
    found = await reports.until(lambda latest: latest["web"].version == "1.5.0", "the new version label")
    assert found["web"].port == web_port

    delete_service(core, namespace, "web")
    found = await reports.until(lambda latest: "web" not in latest, "the deleted Service gone")
    assert set(found) == {"api"}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", web_port), timeout=5).close()


async def test_an_expired_watch_is_followed_by_a_new_list_not_an_outage(
    core: Any, namespace: str, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    terminal = io.StringIO()
    sink = LogSink(tmp_path / "logs", terminal=terminal)
    source = KubernetesSource(
        context=kube_cluster.context,
        namespace=namespace,
        kubeconfig=str(kube_cluster.kubeconfig),
        logs=sink,
        watch_timeout_s=1,
    )
    core.create_namespaced_service(
        namespace, service("first", [{"port": 80}]), _preload_content=False
    ).release_conn()
    reports = Reports()
    task = asyncio.create_task(source.run(reports))
    try:
        await reports.until(lambda latest: "first" in latest, "first")
        # Writes elsewhere move the cluster's revision on; etcd compacts (every 2 s, see the fixture)
        # past the version this quiet namespace's watch resumes from: the server answers 410 Gone.
        for index in range(6):
            core.create_namespaced_config_map(
                namespace, {"metadata": {"name": f"churn-{index}"}}, _preload_content=False
            ).release_conn()
            await asyncio.sleep(1)
        core.create_namespaced_service(
            namespace, service("second", [{"port": 80}]), _preload_content=False
        ).release_conn()
        await reports.until(lambda latest: {"first", "second"} <= set(latest), "second")
        sink.flush()
        records = [
            json.loads(line) for line in next((tmp_path / "logs").glob("*.log")).read_text().splitlines()
        ]
        events = [record.get("event") for record in records]
        assert events.count("k8s-listed") >= 2  # listed again after the 410...
        assert "k8s-unavailable" not in events  # ...which is no outage:
        assert all(found for found in reports.sets)  # the services never went away meanwhile
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sink.close()


async def test_cancelling_the_source_closes_its_listeners_at_once(
    core: Any, namespace: str, kube_cluster: KubeCluster, logs: LogSink
) -> None:
    core.create_namespaced_service(
        namespace, service("web", [{"port": 80}]), _preload_content=False
    ).release_conn()
    source = KubernetesSource(
        context=kube_cluster.context, namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig), logs=logs
    )
    reports = Reports()
    task = asyncio.create_task(source.run(reports))
    found = await reports.until(lambda latest: "web" in latest, "web")
    loop = asyncio.get_running_loop()
    started = loop.time()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert loop.time() - started < 1.0  # the watch (300 s on the server) does not hold it up
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", found["web"].port), timeout=5).close()


async def test_an_unreachable_cluster_reports_nothing_and_keeps_retrying(
    kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    terminal = io.StringIO()
    sink = LogSink(tmp_path / "logs", terminal=terminal)
    # The kubeconfig's "nowhere" context points at 127.0.0.1:1, where nothing listens.
    source = KubernetesSource(
        context="nowhere",
        namespace="default",
        kubeconfig=str(kube_cluster.kubeconfig),
        logs=sink,
        backoff_max_s=0.2,
    )
    reports = Reports()
    task = asyncio.create_task(source.run(reports))
    try:
        await reports.until(lambda latest: True, "a first report")
        assert reports.sets == [[]]
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while terminal.getvalue().count("retrying in") < 3:
            assert asyncio.get_running_loop().time() < deadline, terminal.getvalue()
            await asyncio.sleep(0.05)
        assert not task.done()  # it never gives up, nor raises
        assert "nowhere" in terminal.getvalue()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sink.close()


# -- the data path: a request through the port-forward reaches a server in the test ---------------------


@pytest.fixture
async def http_backend() -> AsyncIterator[tuple[int, list[bytes]]]:
    """An HTTP server on loopback (the "container"); it answers with the request line it got."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n")[0])
        body = b"pod says: " + head.split(b"\r\n")[0]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1]), seen
    server.close()
    await server.wait_closed()


@pytest.fixture
async def fake_node(
    core: Any, tmp_path: Path, http_backend: tuple[int, list[bytes]]
) -> AsyncIterator[tuple[str, FakeKubelet]]:
    """A Node whose kubelet is a FakeKubelet forwarding the pods' port 8080 to the test's HTTP server."""
    kubelet = FakeKubelet(tmp_path, {8080: http_backend[0]})
    await kubelet.start()
    node = f"node-{uuid.uuid4().hex[:8]}"
    status = {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet.port}},
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    core.create_node({"metadata": {"name": node}, "status": status}, _preload_content=False).release_conn()
    yield node, kubelet
    core.delete_node(node, _preload_content=False).release_conn()
    await kubelet.stop()


def running_pod(core: Any, namespace: str, name: str, node: str, labels: dict[str, str]) -> None:
    """A pod bound to `node`, marked Running and Ready through the status subresource (a kubelet's job)."""
    pod = {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod, _preload_content=False).release_conn()
    status = {
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "podIP": "192.0.2.7",
        }
    }
    core.patch_namespaced_pod_status(name, namespace, status, _preload_content=False).release_conn()


def request(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


async def test_a_request_through_the_port_forward_reaches_the_pod(
    core: Any,
    namespace: str,
    running: tuple[KubernetesSource, Reports],
    fake_node: tuple[str, FakeKubelet],
    http_backend: tuple[int, list[bytes]],
) -> None:
    node, kubelet = fake_node
    running_pod(core, namespace, "web-7d9f", node, {"app": "web"})
    # Endpoints as the endpoints controller would write them (not here: no controller-manager). Loopback
    # addresses are refused by the API server; the address is data, the pod is found by its targetRef.
    core.create_namespaced_endpoints(
        namespace,
        {
            "metadata": {"name": "web"},
            "subsets": [
                {
                    "addresses": [
                        {
                            "ip": "192.0.2.7",
                            "targetRef": {"kind": "Pod", "name": "web-7d9f", "namespace": namespace},
                        }
                    ],
                    "ports": [{"name": "http", "port": 8080}],
                }
            ],
        },
        _preload_content=False,
    ).release_conn()
    core.create_namespaced_service(
        namespace,
        service("web", [{"name": "http", "port": 80, "targetPort": "http"}]),
        _preload_content=False,
    ).release_conn()
    # No Endpoints at all: the pod is found by the selector and its named port.
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "by-selector"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 81, "targetPort": "http"}]},
        },
        _preload_content=False,
    ).release_conn()
    _, reports = running
    found = await reports.until(lambda latest: {"web", "by-selector"} <= set(latest), "both Services")

    answer = await asyncio.to_thread(request, found["web"].port, "/orders?id=1")
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    assert answer.endswith(b"pod says: GET /orders?id=1 HTTP/1.1")
    assert f"/portForward/{namespace}/web-7d9f?port=8080" in kubelet.requests

    answer = await asyncio.to_thread(request, found["by-selector"].port, "/second")
    assert answer.endswith(b"pod says: GET /second HTTP/1.1"), answer
    assert http_backend[1] == [b"GET /orders?id=1 HTTP/1.1", b"GET /second HTTP/1.1"]

    # Tunnels opened at the same time, while the watch runs: each one its own websocket, none astray.
    answers = await asyncio.gather(
        *(asyncio.to_thread(request, found["web"].port, f"/parallel/{index}") for index in range(8))
    )
    for index, answer in enumerate(answers):
        assert answer.endswith(f"pod says: GET /parallel/{index} HTTP/1.1".encode()), answer


async def test_readiness_follows_the_pods_without_opening_a_port_forward(
    core: Any, namespace: str, kube_cluster: KubeCluster, logs: LogSink, fake_node: tuple[str, FakeKubelet]
) -> None:
    node, kubelet = fake_node
    source = KubernetesSource(
        context=kube_cluster.context,
        namespace=namespace,
        kubeconfig=str(kube_cluster.kubeconfig),
        logs=logs,
        ready_poll_s=0.2,
    )
    core.create_namespaced_service(
        namespace,
        service("web", [{"name": "http", "port": 80, "targetPort": "http"}]),
        _preload_content=False,
    ).release_conn()
    reports = Reports()
    task = asyncio.create_task(source.run(reports))
    try:
        found = await reports.until(lambda latest: "web" in latest, "web")
        assert (found["web"].ready, found["web"].ready_detail) == (
            False,
            f"no ready pod behind {namespace}/web (pods app=web)",
        )
        # A pod of the selector becomes Running and Ready: reported within a poll, the port unchanged.
        running_pod(core, namespace, "web-0", node, {"app": "web"})
        ready = await reports.until(lambda latest: latest["web"].ready is True, "web ready")
        assert (ready["web"].port, ready["web"].ready_detail) == (found["web"].port, "")
        # It goes: not ready again.
        core.delete_namespaced_pod(
            "web-0", namespace, grace_period_seconds=0, _preload_content=False
        ).release_conn()
        await reports.until(lambda latest: latest["web"].ready is False, "web not ready again")
        assert kubelet.requests == []  # readiness never opened a port-forward
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_a_ready_pod_a_connection_is_closed_and_logged(
    core: Any, namespace: str, running: tuple[KubernetesSource, Reports], logs: LogSink, tmp_path: Path
) -> None:
    core.create_namespaced_service(
        namespace, service("lonely", [{"port": 80}]), _preload_content=False
    ).release_conn()
    _, reports = running
    found = await reports.until(lambda latest: "lonely" in latest, "lonely")
    try:
        answer = await asyncio.to_thread(request, found["lonely"].port, "/")
    except ConnectionResetError:
        answer = b""  # closed with the request unread: a reset, which is "closed" too
    assert answer == b""
    logs.flush()
    records = [
        json.loads(line) for line in (tmp_path / "logs").glob("*.log").__next__().read_text().splitlines()
    ]
    assert any(record.get("event") == "k8s-no-ready-pod" for record in records)


# -- devmesh k8s sync -----------------------------------------------------------------------------------

CONFIG = """\
# The shop, as the team runs it.
[mesh]
name = "shop"   # keep this name: peers match on it

[services.api]
port = 3000  # started by hand

[discovery]
docker = false  # no containers here
"""


def test_k8s_sync_lists_the_services_and_records_the_discovery_key_keeping_comments(
    project: Project, core: Any, namespace: str, kube_cluster: KubeCluster
) -> None:
    core.create_namespaced_service(
        namespace,
        service(
            "web",
            [{"name": "http", "port": 80, "targetPort": 8080}],
            labels={"app.kubernetes.io/version": "2.0"},
        ),
        _preload_content=False,
    ).release_conn()
    path = project.write(CONFIG)
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig)}

    result = devmesh(
        "k8s", "sync", "--context", kube_cluster.context, "--namespace", namespace, cwd=project.root, env=env
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "NAMESPACE", "PORTS", "TARGET", "READY", "PODS", "VERSION"]
    assert row.split() == ["web", namespace, "web:80", "->", "8080", "pods", "app=web", "0", "2.0"]
    text = path.read_text()
    assert text.startswith(CONFIG.rstrip("\n").removesuffix("docker = false  # no containers here"))
    assert "docker = false  # no containers here" in text
    # $KUBECONFIG is not ~/.kube/config: recorded too, so the agent reads the same file.
    recorded = (
        f'kubernetes = {{context = "{kube_cluster.context}", namespace = "{namespace}", '
        f'kubeconfig = "{kube_cluster.kubeconfig}"}}'
    )
    assert recorded in text.replace("{ ", "{").replace(" }", "}")
    from devmesh.config import load_config

    loaded = load_config(path).config.discovery.kubernetes
    assert loaded is not None
    assert (loaded.context, loaded.namespace) == (kube_cluster.context, namespace)
    assert loaded.kubeconfig_path(project.root) == str(kube_cluster.kubeconfig)

    again = devmesh(
        "k8s",
        "sync",
        "--context",
        kube_cluster.context,
        "--namespace",
        namespace,
        "--json",
        cwd=project.root,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    assert document["config_changed"] is False
    assert [entry["name"] for entry in document["services"]] == ["web"]
    assert path.read_text() == text


def test_k8s_sync_no_write_leaves_the_config_alone(
    project: Project, namespace: str, kube_cluster: KubeCluster
) -> None:
    path = project.write(CONFIG)
    result = devmesh(
        "k8s",
        "sync",
        "--context",
        kube_cluster.context,
        "-n",
        namespace,
        "--no-write",
        "--json",
        cwd=project.root,
        env={"KUBECONFIG": str(kube_cluster.kubeconfig)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["services"] == []
    assert path.read_text() == CONFIG


def test_k8s_sync_shows_the_services_before_failing_to_write_a_yaml_config(
    project: Project, core: Any, namespace: str, kube_cluster: KubeCluster
) -> None:
    core.create_namespaced_service(
        namespace, service("web", [{"name": "http", "port": 80}]), _preload_content=False
    ).release_conn()
    path = project.write('mesh:\n  name: "shop"\n', name="devmesh.yaml")
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig)}
    listed = devmesh(
        "k8s", "sync", "--context", kube_cluster.context, "-n", namespace, cwd=project.root, env=env
    )
    assert listed.returncode == 2, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["web", namespace]  # the listing came first
    assert "add this to the config by hand" in listed.stderr
    assert f'kubernetes = {{ context = "{kube_cluster.context}", namespace = "{namespace}"' in listed.stderr
    as_json = devmesh(
        "k8s", "sync", "--context", kube_cluster.context, "-n", namespace, "--json", cwd=project.root, env=env
    )
    assert as_json.returncode == 2, as_json.stderr
    document = json.loads(as_json.stdout)
    assert [entry["name"] for entry in document["services"]] == ["web"]
    assert document["config_changed"] is False and "yaml" in document["config_error"].lower()
    assert path.read_text() == 'mesh:\n  name: "shop"\n'


def test_k8s_sync_fails_clearly_for_an_unknown_context_and_an_unreachable_cluster(
    project: Project, kube_cluster: KubeCluster
) -> None:
    path = project.write(CONFIG)
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig)}
    unknown = devmesh("k8s", "sync", "--context", "prod", cwd=project.root, env=env)
    assert unknown.returncode == 1
    assert "context 'prod' is not in kubeconfig" in unknown.stderr
    assert str(kube_cluster.kubeconfig) in unknown.stderr
    assert "devmesh-test" in unknown.stderr  # the contexts it has

    unreachable = devmesh("k8s", "sync", "--context", "nowhere", cwd=project.root, env=env)
    assert unreachable.returncode == 1
    assert "context 'nowhere' (https://127.0.0.1:1" in unreachable.stderr
    assert str(kube_cluster.kubeconfig) in unreachable.stderr
    assert path.read_text() == CONFIG


# -- the whole story: the agent follows what `k8s sync` recorded and proxies to the pod ----------------


async def test_the_agent_follows_the_synced_namespace_and_proxies_to_the_pod(
    project: Project,
    core: Any,
    namespace: str,
    kube_cluster: KubeCluster,
    fake_node: tuple[str, FakeKubelet],
    http_backend: tuple[int, list[bytes]],
) -> None:
    node, _ = fake_node
    running_pod(core, namespace, "web-0", node, {"app": "web"})
    core.create_namespaced_service(
        namespace,
        service(
            "web",
            [{"name": "http", "port": 80, "targetPort": "http"}],
            labels={"app.kubernetes.io/version": "3.1.0"},
        ),
        _preload_content=False,
    ).release_conn()
    core.create_namespaced_service(
        namespace, service("lonely", [{"name": "http", "port": 80}]), _preload_content=False
    ).release_conn()
    listen = free_port()
    project.write(f'[mesh]\nname = "k8s"\n[proxy]\nadmin = "127.0.0.1:0"\nlisten = "127.0.0.1:{listen}"\n')
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig)}
    # The agent's own $KUBECONFIG names no file: it finds the context by the kubeconfig `sync` recorded.
    agent_env = {"KUBECONFIG": str(project.root / "no-such-kubeconfig")}

    def service_entry(agent: Any, name: str) -> dict[str, Any] | None:
        return next((entry for entry in agent.status()["services"] if entry["name"] == name), None)

    with running_agent(project, env=agent_env) as agent:
        synced = await asyncio.to_thread(
            devmesh,
            "k8s",
            "sync",
            "--context",
            kube_cluster.context,
            "-n",
            namespace,
            cwd=project.root,
            env=env,
        )
        assert synced.returncode == 0, synced.stderr
        # The agent reloads its config, starts following the namespace and registers the Service.
        entry = await asyncio.to_thread(
            wait_for, lambda: service_entry(agent, "web"), timeout=20, what="web in the agent's status"
        )
        assert (entry["origin"], entry["version"]) == ("kubernetes", "3.1.0")
        # Healthy because a ready pod backs it; a Service with none is not, saying why.
        await asyncio.to_thread(agent.wait_healthy, "web", timeout=20)
        lonely = await asyncio.to_thread(
            wait_for,
            lambda: (found := service_entry(agent, "lonely")) and found["health"] == "unhealthy" and found,
            timeout=20,
            what="lonely unhealthy",
        )
        assert lonely["detail"] == f"no ready pod behind {namespace}/lonely (pods app=lonely)", lonely
        await asyncio.sleep(2.5)  # a port check would connect every second, each time a port-forward
        assert fake_node[1].requests == []
        code, _, body = await asyncio.to_thread(http, listen, "web.localhost", "/via-the-mesh")
        assert (code, body) == (200, b"pod says: GET /via-the-mesh HTTP/1.1"), (body, agent.log())

        delete_service(core, namespace, "web")
        await asyncio.to_thread(
            wait_for, lambda: service_entry(agent, "web") is None, timeout=20, what="web gone from the status"
        )
