from __future__ import annotations

from pathlib import Path

from devmesh.supervisor.watch import matches


def test_globs_are_relative_to_the_root(tmp_path: Path) -> None:
    assert matches(tmp_path / "src" / "app.py", tmp_path, ["src/*.py"])
    assert matches(tmp_path / "src" / "deep" / "app.py", tmp_path, ["src/**/*.py"])
    assert matches(tmp_path / "app.py", tmp_path, ["**/*.py"])
    assert not matches(tmp_path / "src" / "app.txt", tmp_path, ["src/*.py"])
    assert not matches(tmp_path.parent / "elsewhere.py", tmp_path, ["**/*.py"])


def test_tool_folders_never_trigger(tmp_path: Path) -> None:
    for folder in (".git", ".devmesh", "__pycache__", "node_modules", ".venv"):
        assert not matches(tmp_path / folder / "x.py", tmp_path, ["**/*.py", "*"])
