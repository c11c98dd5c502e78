"""Finding plugins without importing them, and names that cannot be commands."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devmesh.plugins.registry import declared_names, find_executable, list_plugins
from plugins.distributions import make_distribution


def _program(folder: Path, name: str, mode: int = 0o755) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n", encoding="utf-8")
    path.chmod(mode)
    return path


def test_programs_on_path_first_folder_wins_and_odd_names_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _program(tmp_path / "a", "devmesh-hello")
    second = _program(tmp_path / "b", "devmesh-hello")
    _program(tmp_path / "b", "devmesh-notexec", mode=0o644)
    _program(tmp_path / "b", "devmesh-bad~name")
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert find_executable("hello") == first
    assert find_executable("notexec") is None
    assert find_executable("../a/devmesh-hello") is None  # never a path
    listed = list_plugins(builtins={"status"})
    assert [(info.name, info.source, info.status) for info in listed] == [
        ("hello", str(first), "ok"),
        ("hello", str(second), "shadowed"),
    ]
    assert "executable plugin from" in listed[1].detail


def test_declared_names_reads_entry_points_without_importing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_distribution(
        tmp_path / "site",
        "devmesh-lazy",
        modules={"lazy_plugin": "raise SystemExit('imported!')\n"},
        entry_points={"lazy": "lazy_plugin:cmd", "status": "lazy_plugin:cmd"},
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert declared_names(builtins={"status"}) == [("lazy", "devmesh-lazy-0.1")]
    listed = list_plugins(builtins={"status"})
    assert {info.name: info.status for info in listed} == {"lazy": "broken", "status": "broken"}
    assert "SystemExit: imported!" in listed[0].detail
