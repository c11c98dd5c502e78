"""`devmesh compose import|down|exec` as a user runs them: exit codes and messages, never a traceback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from support import devmesh

COMPOSE = "services:\n  db:\n    image: postgres\n    ports: ['15432:5432']\n"
# A compose implementation that records its arguments and exits 3.
RECORDING_ENGINE = '#!/bin/sh\nprintf \'%s\\n\' "$@" > "$(dirname "$0")/engine-args"\nexit 3\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "docker-compose.yml").write_text(COMPOSE, encoding="utf-8")
    engine = tmp_path / "engine"
    engine.write_text(RECORDING_ENGINE, encoding="utf-8")
    engine.chmod(engine.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def engine_env(folder: Path, **extra: str) -> dict[str, str]:
    return {"DEVMESH_COMPOSE": str(folder / "engine"), "DEVMESH_CONFIG": "", **extra}


@pytest.mark.parametrize(
    "command", [["compose", "import"], ["compose", "import", "--write"], ["compose", "down"]]
)
def test_a_missing_config_named_by_f_is_a_usage_error(folder: Path, command: list[str]) -> None:
    result = devmesh("-f", "nowhere.toml", *command, cwd=folder, env=engine_env(folder))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("devmesh: ") and "nowhere.toml does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["compose", "import"], ["compose", "down"]])
def test_a_missing_config_named_by_devmesh_config_is_a_usage_error(folder: Path, command: list[str]) -> None:
    env = engine_env(folder, DEVMESH_CONFIG=str(folder / "missing" / "devmesh.toml"))
    result = devmesh(*command, cwd=folder, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("devmesh: ") and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_config_write_back_refuses_is_a_config_error(folder: Path) -> None:
    (folder / "devmesh.yaml").write_text("mesh: {name: shop}\n", encoding="utf-8")
    result = devmesh("compose", "import", "--write", cwd=folder, env=engine_env(folder))
    assert result.returncode == 2, result.stderr
    assert "is a YAML config" in result.stderr
    assert "[services.db]" in result.stdout  # the TOML to paste by hand
    assert (folder / "devmesh.yaml").read_text(encoding="utf-8") == "mesh: {name: shop}\n"


def test_exec_runs_the_command_in_the_container_with_the_engine_found_here(folder: Path) -> None:
    result = devmesh(
        "compose",
        "exec",
        "-f",
        "docker-compose.yml",
        "db",
        "--",
        "pg_isready",
        "-U",
        "x",
        "-f",
        "y",
        cwd=folder,
        env=engine_env(folder),
    )
    assert result.returncode == 3, result.stderr  # the engine's exit code
    recorded = (folder / "engine-args").read_text(encoding="utf-8").splitlines()
    compose_file = str(folder / "docker-compose.yml")
    assert recorded == ["-f", compose_file, "exec", "-T", "db", "pg_isready", "-U", "x", "-f", "y"]


def test_exec_of_a_missing_compose_file_is_a_usage_error(folder: Path) -> None:
    result = devmesh(
        "compose", "exec", "-f", "nope.yml", "db", "--", "true", cwd=folder, env=engine_env(folder)
    )
    assert result.returncode == 2 and result.stderr.startswith("devmesh: ")
