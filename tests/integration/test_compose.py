"""`devmesh compose up` against a real engine: rootful podman through podman-compose (tests/engines/podman.py).

A request through devmesh's proxy reaches the compose service's container, and `devmesh down` leaves no
container running.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support import devmesh, free_port, http, wait_for

if TYPE_CHECKING:
    from engines.podman import PodmanEngine

pytest_plugins = ["engines.podman"]  # the `podman` and `podman_engine` fixtures

PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"


def compose_file(engine: PodmanEngine, web_port: int, api_port: int) -> str:
    from engines.podman import CONTAINER_HTTP_PORT, HTTPD_SCRIPT

    command = json.dumps(["/bin/sh", "-c", HTTPD_SCRIPT])
    return f"""\
services:
  web:
    image: {engine.image}
    command: {command}
    environment: ["BODY=hello from the web container"]
    network_mode: slirp4netns
    ports: ["127.0.0.1:${{WEB_PORT:-1}}:{CONTAINER_HTTP_PORT}"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://localhost:{CONTAINER_HTTP_PORT}/"]
      interval: 1s
      retries: 30
    stop_grace_period: 5s
  api:
    image: {engine.image}
    command: {command}
    environment: {{BODY: "hello from the api container"}}
    network_mode: slirp4netns
    ports:
      - target: {CONTAINER_HTTP_PORT}
        published: "{api_port}"
    depends_on:
      web: {{condition: service_healthy}}
"""


def running_containers(engine: PodmanEngine) -> list[str]:
    output = engine.podman("ps", "--format", "{{.Names}}").stdout
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.timeout(240)
def test_compose_up_routes_to_the_containers_and_down_stops_them(
    podman: PodmanEngine, tmp_path: Path
) -> None:
    if not PODMAN_COMPOSE.is_file():
        pytest.skip("podman-compose is not installed in this venv (pip install podman-compose)")
    web_port, api_port, listen = free_port(), free_port(), free_port()
    (tmp_path / "docker-compose.yml").write_text(compose_file(podman, web_port, api_port), encoding="utf-8")
    (tmp_path / ".env").write_text(f"WEB_PORT={web_port}\n", encoding="utf-8")
    (tmp_path / "devmesh.toml").write_text(
        f'[proxy]\nlisten = "127.0.0.1:{listen}"\nadmin = "127.0.0.1:0"\n\n[peers]\ndiscovery = "off"\n',
        encoding="utf-8",
    )
    env = {**podman.env, "DEVMESH_COMPOSE": str(PODMAN_COMPOSE)}

    started = devmesh("compose", "up", "--detach", "--timeout", "150", cwd=tmp_path, env=env, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        status, _, body = http(listen, "web.localhost")
        assert (status, body.strip()) == (200, b"hello from the web container")
        status, _, body = http(listen, "api.localhost")
        assert (status, body.strip()) == (200, b"hello from the api container")
        assert sorted(running_containers(podman)) == [f"{tmp_path.name}_api_1", f"{tmp_path.name}_web_1"]
        listed = json.loads(devmesh("status", "--json", cwd=tmp_path, env=env).stdout)
        health = {entry["name"]: entry["health"] for entry in listed["services"]}
        assert health == {"web": "healthy", "api": "healthy"}

        # The compose file is part of the config: editing it reloads the mesh (api removed: stopped).
        text = compose_file(podman, web_port, api_port)
        (tmp_path / "docker-compose.yml").write_text(text[: text.index("  api:")], encoding="utf-8")

        def names() -> list[str]:
            listed = json.loads(devmesh("status", "--json", cwd=tmp_path, env=env).stdout)
            return [entry["name"] for entry in listed["services"]]

        wait_for(lambda: names() == ["web"], timeout=60, what="api gone after the compose file changed")
        wait_for(
            lambda: running_containers(podman) == [f"{tmp_path.name}_web_1"],
            timeout=30,
            what="the api container stopped",
        )
    finally:
        stopped = devmesh("down", cwd=tmp_path, env=env, timeout=90)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert running_containers(podman) == []
    # Nothing was written to the user's config: compose up runs the services from memory.
    assert "services" not in (tmp_path / "devmesh.toml").read_text(encoding="utf-8")


@pytest.mark.timeout(240)
def test_compose_up_without_a_devmesh_toml_and_compose_down(podman: PodmanEngine, tmp_path: Path) -> None:
    if not PODMAN_COMPOSE.is_file():
        pytest.skip("podman-compose is not installed in this venv (pip install podman-compose)")
    from engines.podman import CONTAINER_HTTP_PORT, HTTPD_SCRIPT

    for default_port in (7080, 7070):  # no devmesh.toml: the proxy and admin API take devmesh's defaults
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", default_port)) == 0:
                pytest.skip(f"port {default_port} is in use here (a devmesh of yours?); this test needs it")
    web_port = free_port()
    command = json.dumps(["/bin/sh", "-c", HTTPD_SCRIPT])
    (tmp_path / "compose.yaml").write_text(
        f"""\
services:
  web:
    image: {podman.image}
    command: {command}
    environment: ["BODY=no config needed"]
    network_mode: slirp4netns
    ports: ["127.0.0.1:{web_port}:{CONTAINER_HTTP_PORT}"]
""",
        encoding="utf-8",
    )
    env = {**podman.env, "DEVMESH_COMPOSE": str(PODMAN_COMPOSE)}
    started = devmesh("compose", "up", "--detach", "--timeout", "150", cwd=tmp_path, env=env, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        record = json.loads((tmp_path / ".devmesh" / "agent.json").read_text(encoding="utf-8"))
        listen = int(record["listen"].rsplit(":", 1)[1])
        status, _, body = http(listen, "web.localhost")
        assert (status, body.strip()) == (200, b"no config needed")
        # Plain devmesh commands find the agent from its folder, with no devmesh.toml there.
        listed = devmesh("status", "--json", cwd=tmp_path, env=env)
        assert listed.returncode == 0, listed.stderr
        assert [entry["name"] for entry in json.loads(listed.stdout)["services"]] == ["web"]
    finally:
        stopped = devmesh("compose", "down", cwd=tmp_path, env=env, timeout=90)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_for(lambda: running_containers(podman) == [], timeout=10, what="no container running")
    assert not (tmp_path / "devmesh.toml").exists()


@pytest.mark.timeout(240)
def test_imported_services_run_under_devmesh_up_with_their_container_healthcheck(
    podman: PodmanEngine, tmp_path: Path
) -> None:
    """`compose import --write`, then plain `devmesh up`: the written config names no path of this machine,
    its in-container healthcheck runs through `devmesh compose exec`, and compose's `$$` reaches the
    container's shell as `$` (the host's own BODY, set here, is not expanded into it)."""
    if not PODMAN_COMPOSE.is_file():
        pytest.skip("podman-compose is not installed in this venv (pip install podman-compose)")
    from engines.podman import CONTAINER_HTTP_PORT, HTTPD_SCRIPT

    web_port, listen = free_port(), free_port()
    command = json.dumps(["/bin/sh", "-c", HTTPD_SCRIPT])
    (tmp_path / "docker-compose.yml").write_text(
        f"""\
services:
  web:
    image: {podman.image}
    command: {command}
    environment: ["BODY=imported"]
    network_mode: slirp4netns
    ports:
      - 127.0.0.1:{web_port}:{CONTAINER_HTTP_PORT}
    healthcheck:
      test: ["CMD-SHELL", "test \\"$${{BODY}}\\" = imported && wget -q -O /dev/null http://127.0.0.1:{CONTAINER_HTTP_PORT}/"]
      interval: 1s
      retries: 60
    stop_grace_period: 3s
""",
        encoding="utf-8",
    )
    (tmp_path / "devmesh.toml").write_text(
        f'[proxy]\nlisten = "127.0.0.1:{listen}"\nadmin = "127.0.0.1:0"\n\n[peers]\ndiscovery = "off"\n',
        encoding="utf-8",
    )
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `devmesh` on PATH
    env = {**podman.env, "DEVMESH_COMPOSE": str(PODMAN_COMPOSE), "PATH": path, "BODY": "the host's"}

    imported = devmesh("compose", "import", "--write", cwd=tmp_path, env=env)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    written = (tmp_path / "devmesh.toml").read_text(encoding="utf-8")
    assert str(PODMAN_COMPOSE) not in written and "devmesh compose exec" in written
    assert "$${BODY}" in written

    started = devmesh("up", "--detach", "--timeout", "90", cwd=tmp_path, env=env, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        listed = json.loads(devmesh("status", "--json", cwd=tmp_path, env=env).stdout)
        assert {entry["name"]: entry["health"] for entry in listed["services"]} == {"web": "healthy"}
        status, _, body = http(listen, "web.localhost")
        assert (status, body.strip()) == (200, b"imported")
    finally:
        stopped = devmesh("down", cwd=tmp_path, env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_for(lambda: running_containers(podman) == [], timeout=10, what="no container running")
