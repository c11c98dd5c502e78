"""Compose services as devmesh services: the tables written or run, the engine, the in-memory session."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from devmesh.compose.engine import ComposeEngine, ComposeNotFound, detect_engine
from devmesh.compose.mapping import read_compose
from devmesh.compose.services import devmesh_services
from devmesh.compose.session import session_config
from devmesh.config import load_config
from devmesh.config.writeback import merge_services

COMPOSE = """\
name: shop
services:
  db:
    image: postgres
    ports: ["15432:5432"]
    healthcheck: {test: ["CMD", "pg_isready"], interval: 2s, retries: 3}
    stop_grace_period: 20s
  api:
    image: api
    ports: ["18000:8000"]
    healthcheck: {test: "curl -f http://localhost:8000/health || exit 1"}
    depends_on: {db: {condition: service_healthy}}
    environment: {MODE: dev}
    restart: "no"
  worker:
    image: worker
    depends_on: [db]
"""
ENGINE = ComposeEngine(("podman-compose",))
# What detect_engine finds on a real machine: absolute paths, this machine's own.
DETECTED_ENGINES = (
    ComposeEngine(("/usr/bin/docker", "compose")),
    ComposeEngine(("/home/me/project/.venv/bin/podman-compose",)),
)


def write_compose(tmp_path: Path) -> Path:
    path = tmp_path / "docker-compose.yml"
    path.write_text(COMPOSE, encoding="utf-8")
    return path


def test_the_tables_import_writes(tmp_path: Path) -> None:
    project = read_compose(write_compose(tmp_path), environ={})
    tables = devmesh_services(project, ENGINE, file_argument="docker-compose.yml", style="portable")
    assert tables == {
        "db": {
            "command": "devmesh compose serve -f docker-compose.yml --stop-timeout 20 db",
            "port": 15432,
            "health": {
                "cmd": "devmesh compose exec -f docker-compose.yml db -- pg_isready",
                "interval": "2s",
                "timeout": "30s",  # compose's default: `compose exec` itself may take more than 1 s
                "unhealthy_after": 3,
            },
            "stop_grace": "65s",
        },
        "api": {
            "command": "devmesh compose serve -f docker-compose.yml api",
            "port": 18000,
            "depends_on": ["db"],
            "env": {"MODE": "dev"},
            "restart": "never",
            "health": {"http": "/health"},
            "stop_grace": "55s",
        },
        "worker": {
            "command": "devmesh compose serve -f docker-compose.yml worker",
            "hosts": [],
            "depends_on": ["db"],
            "stop_grace": "55s",
        },
    }
    config_path = tmp_path / "devmesh.toml"
    assert merge_services(config_path, tables, comment="imported").added == ["db", "api", "worker"]
    config = load_config(config_path, environ={}).config
    assert config.services["worker"].hosts == []
    assert config.services["db"].stop_grace == 65.0


def test_a_published_port_without_a_healthcheck_is_checked_by_tcp(tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  web: {image: x, ports: ['8080:80']}\n", encoding="utf-8")
    tables = devmesh_services(
        read_compose(path, environ={}), ENGINE, file_argument=str(path), style="this-python"
    )
    assert tables["web"]["health"] == {"tcp": True}
    assert tables["web"]["command"] == [
        sys.executable,
        "-m",
        "devmesh",
        "compose",
        "serve",
        "-f",
        str(path),
        "web",
    ]


def test_session_without_a_config_is_the_compose_project(tmp_path: Path) -> None:
    project = read_compose(write_compose(tmp_path), environ={})
    session = session_config(project, ENGINE, None)
    assert session.loaded.path == project.path and session.loaded.project_dir == tmp_path
    assert session.loaded.mesh_name == "shop"
    assert list(session.loaded.config.services) == ["db", "api", "worker"]


def test_session_with_a_config_keeps_its_services_first(tmp_path: Path) -> None:
    project = read_compose(write_compose(tmp_path), environ={})
    (tmp_path / "devmesh.toml").write_text(
        '[services.db]\ncommand = "postgres"\nport = 5432\n\n[services.web]\ncommand = "x"\nport = 18000\n',
        encoding="utf-8",
    )
    base = load_config(tmp_path / "devmesh.toml", environ={})
    session = session_config(project, ENGINE, base)
    assert session.added == ["worker"]
    assert set(session.skipped) == {"db", "api"}
    assert session.skipped["api"] == "port 18000 is used by 'web' in devmesh.toml"
    services = session.loaded.config.services
    assert services["db"].command == "postgres"  # the config's own db, which the worker now waits for
    assert services["worker"].depends_on == ["db"]
    assert session.loaded.path == tmp_path / "devmesh.toml"


def executable(folder: Path, name: str, exit_code: int) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\nexit {exit_code}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_engine_detection_order_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep this interpreter's folder (searched for podman-compose) out of the way.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    executable(tmp_path, "docker", 1)  # a docker without the compose plugin
    executable(tmp_path, "podman-compose", 0)
    environ = {"PATH": str(tmp_path)}
    assert detect_engine(environ).argv == (str(tmp_path / "podman-compose"),)
    executable(tmp_path, "docker-compose", 0)
    assert detect_engine(environ).argv == (str(tmp_path / "docker-compose"),)
    executable(tmp_path, "docker", 0)
    assert detect_engine(environ).argv == (str(tmp_path / "docker"), "compose")
    override = detect_engine({**environ, "DEVMESH_COMPOSE": "podman-compose --in-pod=false"})
    assert override.argv == ("podman-compose", "--in-pod=false")
    with pytest.raises(ComposeNotFound, match="DEVMESH_COMPOSE='nothing-here'"):
        detect_engine({**environ, "DEVMESH_COMPOSE": "nothing-here"})
    for name in ("docker", "docker-compose", "podman-compose"):
        os.unlink(tmp_path / name)
    with pytest.raises(ComposeNotFound, match="no compose implementation found"):
        detect_engine(environ)


DOLLARS_COMPOSE = """\
services:
  db:
    image: postgres
    ports: ["15432:5432"]
    environment:
      POSTGRES_USER: app
      PASSWORD: "pa$$word"
      GREETING: "$${HOME} and $$PATH"
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U $${POSTGRES_USER}"]
"""


def test_written_tables_keep_compose_dollars_literal_through_the_loader(tmp_path: Path) -> None:
    compose_path = tmp_path / "docker-compose.yml"
    compose_path.write_text(DOLLARS_COMPOSE, encoding="utf-8")
    project = read_compose(compose_path, environ={})
    # Compose's `$$` is one `$`, for the container's shell: the mapping leaves `${POSTGRES_USER}`.
    assert project.services[0].health is not None
    assert project.services[0].health.test_argv == ("/bin/sh", "-c", "pg_isready -U ${POSTGRES_USER}")
    tables = devmesh_services(project, ENGINE, file_argument="docker-compose.yml", style="portable")
    config_path = tmp_path / "devmesh.toml"
    assert merge_services(config_path, tables, comment="imported").added == ["db"]
    # The host has these set: the loader must not expand them into the written values.
    loaded = load_config(config_path, environ={"POSTGRES_USER": "host-user", "HOME": "/host/home"})
    assert loaded.warnings == ()
    db = loaded.config.services["db"]
    assert db.env == {"POSTGRES_USER": "app", "PASSWORD": "pa$word", "GREETING": "${HOME} and $PATH"}
    assert db.health is not None
    assert db.health.cmd == (
        "devmesh compose exec -f docker-compose.yml db -- /bin/sh -c 'pg_isready -U ${POSTGRES_USER}'"
    )


def test_in_memory_tables_are_not_escaped(tmp_path: Path) -> None:
    compose_path = tmp_path / "docker-compose.yml"
    compose_path.write_text(DOLLARS_COMPOSE, encoding="utf-8")
    project = read_compose(compose_path, environ={})
    # `compose up` validates the tables directly, with no loader to read `$$` back as `$`.
    services = session_config(project, ENGINE, None).loaded.config.services
    assert services["db"].env["PASSWORD"] == "pa$word"
    assert services["db"].health is not None and services["db"].health.cmd is not None
    assert services["db"].health.cmd.endswith("'pg_isready -U ${POSTGRES_USER}'")
    # ...also when merged with a devmesh.toml (which the loader did read).
    (tmp_path / "devmesh.toml").write_text('[services.web]\ncommand = "x"\nport = 18000\n', encoding="utf-8")
    base = load_config(tmp_path / "devmesh.toml", environ={})
    merged = session_config(project, ENGINE, base).loaded.config.services
    assert merged["db"].env["GREETING"] == "${HOME} and $PATH"


@pytest.mark.parametrize("engine", DETECTED_ENGINES, ids=lambda engine: engine.label)
def test_a_written_health_command_names_no_path_of_this_machine(
    tmp_path: Path, engine: ComposeEngine
) -> None:
    project = read_compose(write_compose(tmp_path), environ={})
    tables = devmesh_services(project, engine, file_argument="docker-compose.yml", style="portable")
    written = tables["db"]["health"]["cmd"]
    assert engine.argv[0] not in written
    assert written == "devmesh compose exec -f docker-compose.yml db -- pg_isready"
    # In memory (`compose up`, this machine, this run): the engine found here is the one to use.
    in_memory = devmesh_services(project, engine, file_argument=str(project.path), style="this-python")
    assert in_memory["db"]["health"]["cmd"] == shlex.join(
        [*engine.argv, "-f", str(project.path), "exec", "-T", "db", "pg_isready"]
    )


@pytest.mark.parametrize("stop_timeout", [0.0, 0.5, 10.0, 20.0, 90.0])
def test_stop_grace_covers_the_longest_serve_can_take_to_stop(tmp_path: Path, stop_timeout: float) -> None:
    from devmesh.compose.serve import STOP_OVERHEAD_S, UP_EXIT_WAIT_S
    from devmesh.config.units import parse_duration_s

    path = tmp_path / "compose.yaml"
    path.write_text(f"services:\n  web: {{image: x, stop_grace_period: {stop_timeout}}}\n", encoding="utf-8")
    (table,) = devmesh_services(
        read_compose(path, environ={}), ENGINE, file_argument="compose.yaml", style="portable"
    ).values()
    # serve after SIGTERM: `compose stop` (the timeout + STOP_OVERHEAD_S), then `up` gets UP_EXIT_WAIT_S to
    # end, and UP_EXIT_WAIT_S more after its SIGTERM. The supervisor's SIGKILL must come after all that.
    worst_case = stop_timeout + STOP_OVERHEAD_S + 2 * UP_EXIT_WAIT_S
    assert parse_duration_s(table["stop_grace"]) >= worst_case + 1.0


SERVE_SCRIPT = """\
import sys
from pathlib import Path

import devmesh.compose.serve as serve
from devmesh.compose.engine import ComposeEngine

serve.STOP_OVERHEAD_S, serve.UP_EXIT_WAIT_S = float(sys.argv[3]), float(sys.argv[4])
engine = ComposeEngine((sys.executable, sys.argv[1]))
sys.exit(serve.serve(engine, Path(sys.argv[2]), "web", stop_timeout_s=float(sys.argv[5])))
"""
STUBBORN_ENGINE = """\
import signal
import sys
import time
from pathlib import Path

# `up` ignores SIGTERM and `stop` never returns: serve's every wait runs to its end.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
Path(sys.argv[2]).with_name(sys.argv[3]).write_text("started")
time.sleep(120)
"""


def test_serve_stops_within_the_worst_case_stop_grace_covers(tmp_path: Path) -> None:
    """The worst case the stop_grace arithmetic assumes is the one serve really has (scaled down)."""
    import signal
    import subprocess
    import time

    from support import wait_for

    (tmp_path / "compose.yaml").write_text("services:\n  web: {image: x}\n", encoding="utf-8")
    (tmp_path / "serve.py").write_text(SERVE_SCRIPT, encoding="utf-8")
    (tmp_path / "engine.py").write_text(STUBBORN_ENGINE, encoding="utf-8")
    overhead, up_wait, stop_timeout = 0.4, 0.3, 0.2
    files = [str(tmp_path / name) for name in ("serve.py", "engine.py", "compose.yaml")]
    process = subprocess.Popen(
        [sys.executable, *files, str(overhead), str(up_wait), str(stop_timeout)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (tmp_path / "up").exists(), timeout=20, what="`compose up` started")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 1  # the stop timed out
        elapsed = time.monotonic() - started
        assert (tmp_path / "stop").exists()
        worst_case = stop_timeout + overhead + 2 * up_wait
        assert worst_case <= elapsed < worst_case + 3.0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # serve left nothing running in its group: `up` was killed, and `stop` when its time ran out.
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
