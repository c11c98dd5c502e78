"""Two real agents on loopback, peers by static address: a request for a service one of them does not run
is served by the other, through its mesh port, signed with the mesh secret."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from devmesh.peers.catalog import CATALOG_PATH
from devmesh.peers.signing import mesh_key, sign
from support import TINY_COMMAND, Project, free_port, http, next_event, running_agent, wait_for


def project_in(root: Path, name: str) -> Project:
    folder = root / name
    folder.mkdir()
    return Project(folder.resolve())


def offering_agent(
    project: Project,
    *,
    mesh_port: int,
    secret: str = "s3cret",
    version: str = "1.4.2",
    mesh: str = "team",
    discovery: str = "off",
) -> int:
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "{mesh}"
secret = "{secret}"
share = true
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
mesh = "127.0.0.1:{mesh_port}"
[peers]
discovery = "{discovery}"
interfaces = ["127.0.0.1"]
[services.api]
command = "{TINY_COMMAND}"
version = "{version}"
health = {{ http = "/health", interval = "1s" }}
"""
    )
    return listen


def following_agent(
    project: Project,
    *,
    peer_port: int | None,
    secret: str = "s3cret",
    extra: str = "",
    mesh: str = "team",
    discovery: str = "off",
) -> int:
    listen = free_port()
    static = f'"127.0.0.1:{peer_port}"' if peer_port is not None else ""
    project.write(
        f"""
[mesh]
name = "{mesh}"
secret = "{secret}"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
mesh = "127.0.0.1:{free_port()}"
[peers]
static = [{static}]
discovery = "{discovery}"
interfaces = ["127.0.0.1"]
[services.web]
command = "{TINY_COMMAND}"
{extra}
"""
    )
    return listen


def test_a_peers_service_is_served_through_its_mesh_port_and_leaves_when_the_peer_dies(
    tmp_path: Path,
) -> None:
    mesh_port = free_port()
    alice, bob = project_in(tmp_path, "alice"), project_in(tmp_path, "bob")
    offering_agent(alice, mesh_port=mesh_port)
    bob_listen = following_agent(bob, peer_port=mesh_port)
    with running_agent(alice) as offering, running_agent(bob) as following:
        offering.wait_healthy("api")
        entry = wait_for(lambda: _healthy(following, "api"), timeout=10, what="alice's api in bob's mesh")
        assert entry["origin"] == "peer" and entry["version"] == "1.4.2"
        assert entry["url"] == f"http://api.localhost:{bob_listen}"

        status, headers, body = http(bob_listen, "api.localhost", "/hello")
        assert status == 200, body
        assert json.loads(body)["path"] == "/hello"
        alice_peer = following.status()["peers"][0]["peer"]
        assert headers["x-devmesh-served-by"] == f"{alice_peer}/api@1.4.2"
        assert following.status()["peers"][0]["alive"] is True
        # The service's own port is never what bob talks to: only alice's mesh port.
        assert _service(following, "api")["port"] is None

        offering.process.send_signal(signal.SIGKILL)  # no goodbye: bob must notice by itself
        killed = time.monotonic()
        wait_for(
            lambda: _service(following, "api") is None, timeout=8, what="alice's api to leave bob's mesh"
        )
        assert time.monotonic() - killed < 5.0
        assert http(bob_listen, "api.localhost")[0] == 404
        offering.process.wait(10)


def test_wrong_secret_is_refused_and_the_other_mesh_sees_nothing(tmp_path: Path) -> None:
    mesh_port = free_port()
    alice, mallory = project_in(tmp_path, "alice"), project_in(tmp_path, "mallory")
    offering_agent(alice, mesh_port=mesh_port)
    mallory_listen = following_agent(mallory, peer_port=mesh_port, secret="guess")
    with running_agent(alice) as offering, running_agent(mallory) as following:
        offering.wait_healthy("api")
        peer = wait_for(
            lambda: (p := following.status()["peers"][0])["error"] and p, timeout=10, what="the refusal"
        )
        assert peer["alive"] is False and "401" in peer["error"]
        assert _service(following, "api") is None
        assert http(mallory_listen, "api.localhost")[0] == 404
        # Straight at the mesh port: unsigned, or signed with another key, or replayed: 401.
        assert http(mesh_port, "api", "/", {"X-DevMesh-Service": "api"})[0] == 401
        forged = sign(mesh_key("team", "guess"), "GET", CATALOG_PATH, "mallory")
        assert http(mesh_port, "x", CATALOG_PATH, forged)[0] == 401
        good = sign(mesh_key("team", "s3cret"), "GET", CATALOG_PATH, "tester")
        assert http(mesh_port, "x", CATALOG_PATH, good)[0] == 200
        assert http(mesh_port, "x", CATALOG_PATH, good)[0] == 401, "a replayed request must be refused"
        assert offering.status()["agent"]["mesh_refused"] >= 4, "refusals are counted"


def test_requires_filters_peer_versions_under_both_policies(tmp_path: Path) -> None:
    mesh_port = free_port()
    alice, bob = project_in(tmp_path, "alice"), project_in(tmp_path, "bob")
    offering_agent(alice, mesh_port=mesh_port, version="1.4.2")
    bob_listen = following_agent(bob, peer_port=mesh_port, extra='[services.api]\nrequires = "^2.0"\n')
    with running_agent(alice) as offering, running_agent(bob) as following:
        offering.wait_healthy("api")
        wait_for(lambda: following.status()["peers"][0]["alive"], timeout=10, what="alice to be followed")
        status, _, body = http(bob_listen, "api.localhost")
        page = json.loads(body)
        assert status == 503
        assert "1.4.2" in page["message"] and "^2.0" in page["message"]
        # warn: a version outside the range rather than no answer.
        bob.write(
            bob.root.joinpath("devmesh.toml")
            .read_text()
            .replace('name = "team"', 'name = "team"\nversion_policy = "warn"')
        )
        wait_for(lambda: http(bob_listen, "api.localhost")[0] == 200, timeout=10, what="the warn policy")
        assert "take effect after" not in following.log(), "version_policy applies live: no restart asked"


def _service(agent, name: str):  # type: ignore[no-untyped-def]
    for entry in agent.status()["services"]:
        if entry["name"] == name:
            return entry
    return None


def test_peers_find_each_other_by_mdns_on_loopback_and_a_clean_stop_is_seen_at_once(tmp_path: Path) -> None:
    mesh = f"mdns-{tmp_path.name}"  # unique: agents of parallel tests on loopback never meet
    alice, bob = project_in(tmp_path, "alice"), project_in(tmp_path, "bob")
    bob_listen = following_agent(bob, peer_port=None, mesh=mesh, discovery="mdns")
    offering_agent(alice, mesh_port=free_port(), mesh=mesh, discovery="mdns")
    with running_agent(bob) as following:
        with running_agent(alice) as offering:
            offering.wait_healthy("api")
            wait_for(lambda: _healthy(following, "api"), timeout=10, what="alice's api found by mDNS")
            status, headers, _ = http(bob_listen, "api.localhost")
            assert status == 200 and headers["x-devmesh-served-by"].endswith("/api@1.4.2")
        stopped = time.monotonic()  # alice stopped cleanly: a goodbye on mDNS, a closed mesh port
        wait_for(lambda: _service(following, "api") is None, timeout=5, what="alice to leave")
        assert time.monotonic() - stopped < 2.0


def _healthy(agent, name: str):  # type: ignore[no-untyped-def]
    entry = _service(agent, name)
    return entry if entry is not None and entry["health"] == "healthy" else None


def test_local_first_then_pins_by_header_and_by_devmesh_route(tmp_path: Path) -> None:
    from support import devmesh

    mesh_port = free_port()
    alice, bob = project_in(tmp_path, "alice"), project_in(tmp_path, "bob")
    offering_agent(alice, mesh_port=mesh_port, version="2.0.0")
    own_api = f'[services.api]\ncommand = "{TINY_COMMAND}"\nversion = "1.0.0"\n'
    bob_listen = following_agent(bob, peer_port=mesh_port, extra=own_api)
    with running_agent(alice) as offering, running_agent(bob) as following:
        offering.wait_healthy("api")
        following.wait_healthy("api")
        wait_for(lambda: following.status()["peers"][0]["alive"], timeout=10, what="alice followed")
        alice_peer = following.status()["peers"][0]["peer"]
        wait_for(
            lambda: (
                http(bob_listen, "api.localhost", headers={"X-DevMesh-Route": f"peer={alice_peer}"})[0] == 200
            ),
            timeout=10,
            what="alice's api among bob's endpoints",
        )
        served = lambda **h: http(bob_listen, "api.localhost", headers=h)[1]["x-devmesh-served-by"]  # noqa: E731
        assert served() == "local/api@1.0.0", "this machine's endpoint first"
        assert served(**{"X-DevMesh-Route": f"peer={alice_peer}"}) == f"{alice_peer}/api@2.0.0"
        assert http(bob_listen, "api.localhost", headers={"X-DevMesh-Route": "peer=nobody"})[0] == 503
        assert http(bob_listen, "api.localhost", headers={"X-DevMesh-Route": "sideways"})[0] == 400

        pinned = devmesh("route", "api", "--peer", alice_peer, cwd=bob.root)
        assert pinned.returncode == 0, pinned.stderr
        assert {served() for _ in range(3)} == {f"{alice_peer}/api@2.0.0"}
        assert following.client.get("/api/v1/routes") == {"api": f"peer={alice_peer}"}
        assert devmesh("route", "api", "--clear", cwd=bob.root).returncode == 0
        assert served() == "local/api@1.0.0"
        assert devmesh("route", "api", "--local", "--remote", cwd=bob.root).returncode == 2

        listed = json.loads(devmesh("peers", "--json", cwd=bob.root).stdout)
        assert listed[0]["peer"] == alice_peer and listed[0]["alive"] is True
        assert listed[0]["services"] == [{"name": "api", "version": "2.0.0", "healthy": True}]
        table = devmesh("peers", cwd=bob.root).stdout
        assert alice_peer in table and "api@2.0.0" in table
        overview = devmesh("status", cwd=bob.root).stdout
        assert alice_peer in overview and "alive" in overview and " ms" in overview


def test_mutual_tls_on_the_mesh_port(tmp_path: Path) -> None:
    from devmesh.tls import LocalCA

    team_ca, _ = LocalCA.load_or_create(tmp_path / "team-ca")
    mesh_port = free_port()
    alice, bob, eve = project_in(tmp_path, "alice"), project_in(tmp_path, "bob"), project_in(tmp_path, "eve")
    for member in (alice, bob):
        cert, key = team_ca.issue(["127.0.0.1"], client=True)
        (member.root / "agent.crt").write_bytes(cert)
        (member.root / "agent.key").write_bytes(key)
        (member.root / "ca.crt").write_bytes(team_ca.cert_path.read_bytes())
    mtls = '\n[proxy.mesh_tls]\ncert = "agent.crt"\nkey = "agent.key"\nca = "ca.crt"\n'
    offering_agent(alice, mesh_port=mesh_port)
    alice.write(
        alice.root.joinpath("devmesh.toml").read_text().replace("[peers]", mtls.strip() + "\n[peers]")
    )
    bob_listen = following_agent(bob, peer_port=mesh_port)
    bob.write(bob.root.joinpath("devmesh.toml").read_text().replace("[peers]", mtls.strip() + "\n[peers]"))
    following_agent(eve, peer_port=mesh_port)  # the secret, but no certificate of the team
    with running_agent(alice) as offering, running_agent(bob) as following, running_agent(eve) as outsider:
        offering.wait_healthy("api")
        wait_for(lambda: _healthy(following, "api"), timeout=10, what="alice's api in bob's mesh, over mTLS")
        status, headers, _ = http(bob_listen, "api.localhost")
        assert status == 200 and headers["x-devmesh-served-by"].endswith("/api@1.4.2")
        peer = wait_for(
            lambda: (p := outsider.status()["peers"][0])["error"] and p, timeout=10, what="eve refused"
        )
        assert peer["alive"] is False and _service(outsider, "api") is None


def test_only_shared_services_are_offered_and_a_mesh_shared_without_a_secret_is_warned_about(
    tmp_path: Path,
) -> None:
    from devmesh.peers.catalog import Catalog

    mesh_port = free_port()
    alice = project_in(tmp_path, "alice")
    alice.write(
        f"""
[mesh]
name = "open-{tmp_path.name}"
share = true
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
mesh = "127.0.0.1:{mesh_port}"
[peers]
discovery = "off"
[services.api]
command = "{TINY_COMMAND}"
[services.secret-admin]
command = "{TINY_COMMAND}"
share = false
"""
    )
    with running_agent(alice) as offering:
        offering.wait_healthy()
        assert "shared without a secret" in offering.log()
        status, _, body = http(mesh_port, "x", CATALOG_PATH, {"X-DevMesh-Peer": "anyone"})
        assert status == 200
        assert [s.name for s in Catalog.from_json(body).services] == ["api"]
        refused, _, _ = http(mesh_port, "x", "/", {"X-DevMesh-Service": "secret-admin"})
        assert refused == 404


def test_the_events_stream_and_metrics_follow_a_peer_joining_and_leaving(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    mesh_port = free_port()
    alice, bob = project_in(tmp_path, "alice"), project_in(tmp_path, "bob")
    offering_agent(alice, mesh_port=mesh_port)
    following_agent(bob, peer_port=mesh_port)
    with running_agent(bob) as following:
        admin = following.status()["agent"]["admin"]
        with connect(f"ws://{admin}/api/v1/events", open_timeout=5) as stream:
            assert json.loads(stream.recv(timeout=5))["type"] == "hello"

            with running_agent(alice) as offering:
                joined = next_event(stream, "peer", 15)
                assert joined["event"] == "joined" and isinstance(joined["peers"], list)
                alice_id = joined["peer"]
                served = next_event(stream, "service", 5)  # alice's api, now reachable from bob
                assert served["service"]["name"] == "api" and served["service"]["origin"] == "peer"  # type: ignore[index]
                assert served["service"]["endpoints"][0]["peer"] == alice_id  # type: ignore[index]

                # The first event may carry the peer's endpoint before its health is known (up 0).
                def metrics() -> bytes:
                    return http(int(admin.rpartition(":")[2]), admin, "/metrics")[2]

                wait_for(
                    lambda: b'devmesh_service_up{origin="peer",service="api"} 1.0' in metrics(),
                    timeout=5,
                    what="the peer's api up in /metrics",
                )
                assert b"devmesh_peers 1.0" in metrics()
                offering.process.send_signal(signal.SIGTERM)
                left = next_event(stream, "peer", 10)
                assert left == {**left, "event": "left", "peer": alice_id}
                offering.process.wait(15)


def test_a_partition_scenario_cuts_one_peer_off_for_its_duration(tmp_path: Path) -> None:
    from support import devmesh

    mesh_port = free_port()
    alice, bob = project_in(tmp_path, "alice"), project_in(tmp_path, "bob")
    offering_agent(alice, mesh_port=mesh_port)
    bob_listen = following_agent(bob, peer_port=mesh_port)
    with running_agent(alice) as offering, running_agent(bob) as following:
        offering.wait_healthy("api")
        wait_for(lambda: _healthy(following, "api"), timeout=10, what="alice's api in bob's mesh")
        alice_id = following.status()["peers"][0]["peer"]
        started = devmesh(
            "chaos", "run", f"partition:{alice_id}", "--duration", "30s", "--detach", cwd=bob.root
        )
        assert started.returncode == 0, started.stderr
        assert http(bob_listen, "api.localhost", "/")[0] == 503  # known, but out of reach
        assert _service(following, "api")["endpoints"] == []
        assert http(mesh_port, "x", "/")[0] == 401  # alice herself is untouched: only bob's view is cut
        assert devmesh("chaos", "stop", f"partition:{alice_id}", cwd=bob.root).returncode == 0
        assert http(bob_listen, "api.localhost", "/hello")[0] == 200


PEER_SERVED = 'depends_on = ["api"]\n[services.api]\nrequires = "^1.4"\n'


def test_a_service_declared_to_be_served_by_a_peer_is_up_while_a_peer_serves_it(tmp_path: Path) -> None:
    mesh_port = free_port()
    alice, bob = project_in(tmp_path, "alice"), project_in(tmp_path, "bob")
    offering_agent(alice, mesh_port=mesh_port)
    bob_listen = following_agent(bob, peer_port=mesh_port, extra=PEER_SERVED)
    with running_agent(bob) as following:
        # alice is not there yet: api is not available, and says why; web waits for it.
        api = wait_for(
            lambda: (e := _service(following, "api"))["health"] == "unhealthy" and e,
            timeout=10,
            what="api found not served",
        )
        assert (api["origin"], api["state"]) == ("peer", "stopped")
        assert api["detail"] == f"peer at 127.0.0.1:{mesh_port}: its mesh port is closed"
        web = _service(following, "web")
        assert (web["state"], web["detail"]) == ("starting", "waiting for api")
        assert web["pid"] is None, "web must not start before api is reachable"

        with running_agent(alice) as offering:
            offering.wait_healthy("api")
            document = following.wait_healthy("api", "web")
            api = next(entry for entry in document["services"] if entry["name"] == "api")
            assert (api["origin"], api["state"], api["health"]) == ("peer", "running", "healthy")
            assert [(e["origin"], e["version"], e["healthy"]) for e in api["endpoints"]] == [
                ("peer", "1.4.2", True)
            ]
            status, headers, _ = http(bob_listen, "api.localhost", "/hello")
            assert status == 200 and headers["x-devmesh-served-by"].endswith("/api@1.4.2")

        # alice stopped: api is no longer served, with the reason; web keeps running.
        api = wait_for(
            lambda: (e := _service(following, "api"))["health"] == "unhealthy" and e,
            timeout=8,
            what="api no longer served",
        )
        assert api["state"] == "stopped"
        assert "its mesh port is closed" in api["detail"]
        assert _service(following, "web")["state"] == "running"


def test_up_detach_names_why_a_peer_served_service_is_not_up(tmp_path: Path) -> None:
    from support import devmesh

    mesh_port = free_port()
    bob = project_in(tmp_path, "bob")
    following_agent(bob, peer_port=mesh_port, extra=PEER_SERVED)
    try:
        result = devmesh("up", "--detach", "--timeout", "3", cwd=bob.root)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "not every service was healthy within 3s" in output
        assert f"peer at 127.0.0.1:{mesh_port}: its mesh port is closed" in output, output
    finally:
        assert devmesh("down", cwd=bob.root).returncode == 0
    wait_for(lambda: not bob.leftovers(), timeout=10, what="no process left behind")
