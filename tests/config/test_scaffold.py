"""`devmesh init`'s detection and rendering: whatever it writes must load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devmesh.config import load_config
from devmesh.config.scaffold import detect_services, render_config, service_name, write_config
from support import devmesh


def loads(project: Path) -> dict[str, object]:
    write_config(project, force=True)
    config = load_config(project / "devmesh.toml", environ={}).config
    return {name: spec for name, spec in config.services.items()}


def test_procfile(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(
        "web: gunicorn app:app --bind 0.0.0.0:$PORT\n# comment\nworker_1: celery -A x worker\n"
    )
    services = detect_services(tmp_path)
    assert [(s.name, s.command) for s in services] == [
        ("web", "gunicorn app:app --bind 0.0.0.0:$PORT"),
        ("worker-1", "celery -A x worker"),
    ]
    config = loads(tmp_path)
    assert config["web"].command == "gunicorn app:app --bind 0.0.0.0:$PORT"  # type: ignore[attr-defined]


def test_compose_services_with_published_ports(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(
        """
services:
  db:
    image: postgres
    ports: ["5432:5432"]
  cache:
    image: redis
    ports:
      - target: 6379
        published: 6380
  api:
    build: .
    command: uvicorn app:app
    ports: ["127.0.0.1:8000:8000/tcp"]
    depends_on: [db, cache, internal]
  internal:
    image: worker
"""
    )
    services = {s.name: s for s in detect_services(tmp_path)}
    assert set(services) == {"db", "cache", "api"}
    assert services["cache"].port == 6380
    assert services["api"].port == 8000
    assert services["api"].command is None  # the container's command is not a host command
    assert services["api"].depends_on == ("db", "cache")
    config = loads(tmp_path)
    assert config["db"].port == 5432  # type: ignore[attr-defined]


def test_compose_ports_unquoted_and_restart_no_as_compose_reads_them(tmp_path: Path) -> None:
    # YAML 1.1 would read `2222:22` as a base-60 int (no published port: not detected) and `no` as False.
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  git:\n    image: gitea\n    restart: no\n    ports:\n      - 2222:22\n"
        "  mail:\n    image: mailhog\n    ports:\n      - 1025:25\n",
        encoding="utf-8",
    )
    services = {s.name: s.port for s in detect_services(tmp_path)}
    assert services == {"git": 2222, "mail": 1025}
    config = loads(tmp_path)
    assert config["git"].port == 2222  # type: ignore[attr-defined]


def test_package_json_and_procfile_precedence(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(
        json.dumps({"name": "@acme/Front_End", "scripts": {"dev": "vite"}})
    )
    assert [(s.name, s.command) for s in detect_services(tmp_path)] == [("front-end", "npm run dev")]
    (tmp_path / "Procfile").write_text("front-end: node server.js\n")
    assert [(s.name, s.source) for s in detect_services(tmp_path)] == [("front-end", "Procfile")]


def test_hostile_names_and_commands_still_load(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("Web_Worker.2: echo \"quoted\" \\\\ back\\slash 'single' $PORT\n")
    config = loads(tmp_path)
    (name,) = config
    assert name == "web-worker-2"
    assert config[name].command == "echo \"quoted\" \\\\ back\\slash 'single' $PORT"  # type: ignore[attr-defined]


def test_nothing_detected_writes_a_commented_example(tmp_path: Path) -> None:
    text = render_config(tmp_path, [])
    assert "# [services.api]" in text
    load_config(write_config(tmp_path), environ={})


def test_existing_config_is_kept_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "devmesh.toml").write_text("# mine\n")
    with pytest.raises(FileExistsError):
        write_config(tmp_path)
    assert (tmp_path / "devmesh.toml").read_text() == "# mine\n"
    write_config(tmp_path, force=True)
    assert "[mesh]" in (tmp_path / "devmesh.toml").read_text()
    assert list(tmp_path.glob(".devmesh.toml.*")) == []


def test_service_names() -> None:
    assert service_name("My_Service") == "my-service"
    assert service_name("---") == "app"
    assert len(service_name("x" * 100)) == 63


def test_init_command(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: python -m http.server $PORT\n")
    result = devmesh("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "found web in Procfile" in result.stdout
    again = devmesh("init", cwd=tmp_path)
    assert again.returncode == 1
    assert "--force" in again.stderr
    status = devmesh("status", "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["services"][0]["name"] == "web"
