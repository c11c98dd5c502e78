"""Compose services as devmesh services: the tables written or run, the engine, the in-memory session."""

from __future__ import annotations

import os
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
                "cmd": "podman-compose -f docker-compose.yml exec -T db pg_isready",
                "interval": "2s",
                "unhealthy_after": 3,
            },
            "stop_grace": "25s",
        },
        "api": {
            "command": "devmesh compose serve -f docker-compose.yml api",
            "port": 18000,
            "depends_on": ["db"],
            "env": {"MODE": "dev"},
            "restart": "never",
            "health": {"http": "/health"},
            "stop_grace": "15s",
        },
        "worker": {
            "command": "devmesh compose serve -f docker-compose.yml worker",
            "hosts": [],
            "depends_on": ["db"],
            "stop_grace": "15s",
        },
    }
    config_path = tmp_path / "devmesh.toml"
    assert merge_services(config_path, tables, comment="imported").added == ["db", "api", "worker"]
    config = load_config(config_path, environ={}).config
    assert config.services["worker"].hosts == []
    assert config.services["db"].stop_grace == 25.0


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
