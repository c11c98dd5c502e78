"""Config write-back: the user's bytes kept, duplicates refused, atomic, validated, YAML refused."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from devmesh.config import load_config
from devmesh.config.writeback import (
    MergeResult,
    WritebackError,
    atomic_write_text,
    merge_services,
    services_toml,
    set_table,
)

# Comments everywhere, blank lines, inline tables, odd spacing, quoted keys, a dotted key, no final blank line.
USER_CONFIG = textwrap.dedent(
    """\
    # The shop's mesh.   Keep this comment exactly.
    [mesh]
    name   =   "shop"        # aligned   comments

    [proxy]
    listen="127.0.0.1:7080"


    [services.api]   # the API
    command = "python -m http.server $PORT"
    port = 3000
    env = {  DATABASE_URL = "postgres://localhost/shop",   "X-Odd key" = 'single'  }
    health = { http = "/health", interval = "2s" }

    # a commented-out service:
    # [services.old]
    [services.worker]
    command = ["python", "-c", "import time; time.sleep(60)"]
    depends_on = [ "api" ]
    [faults.slow]
    service = "api"
    delay = "300ms"   # trailing comment, no newline after the last line"""
)


def write(tmp_path: Path, text: str, name: str = "devmesh.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def temporaries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if ".tmp" in entry.name)


def test_merge_appends_after_the_users_bytes_and_loads(tmp_path: Path) -> None:
    path = write(tmp_path, USER_CONFIG)
    result = merge_services(
        path,
        {
            "web": {
                "command": "podman-compose -f docker-compose.yml up --no-deps web",
                "port": 8080,
                "depends_on": ["api"],
                "env": {"MODE": "dev"},
                "health": {"http": "/", "interval": "5s", "unhealthy_after": 3},
            }
        },
        comment="imported from docker-compose.yml by devmesh compose import",
    )
    assert result == MergeResult(added=["web"], skipped={})
    text = path.read_text(encoding="utf-8")
    assert text.startswith(USER_CONFIG)
    added = text[len(USER_CONFIG) :]
    assert added == (
        "\n\n# imported from docker-compose.yml by devmesh compose import\n"
        "[services.web]\n"
        'command = "podman-compose -f docker-compose.yml up --no-deps web"\n'
        "port = 8080\n"
        'depends_on = ["api"]\n'
        'env = {MODE = "dev"}\n'
        'health = {http = "/", interval = "5s", unhealthy_after = 3}\n'
    )
    web = load_config(path).config.services["web"]
    assert web.port == 8080 and web.depends_on == ["api"] and web.env == {"MODE": "dev"}
    assert web.health is not None and web.health.http == "/" and web.health.interval == 5.0
    assert temporaries(tmp_path) == []


def test_existing_name_and_taken_port_are_skipped_with_reasons(tmp_path: Path) -> None:
    path = write(tmp_path, USER_CONFIG)
    result = merge_services(
        path,
        {
            "api": {"port": 9999},
            "other-api": {"port": 3000},
            "web": {"port": 8080},
            "web-copy": {"port": 8080},
            "cache": {"port": 6379},
        },
        comment="from docker",
    )
    assert result.added == ["web", "cache"]
    assert result.skipped == {
        "api": "a service named 'api' is already in devmesh.toml",
        "other-api": "port 3000 is already used by service 'api' (in devmesh.toml)",
        "web-copy": "port 8080 is already used by service 'web' (being added too)",
    }
    services = tomllib.loads(path.read_text(encoding="utf-8"))["services"]
    assert list(services) == ["api", "worker", "web", "cache"]
    assert services["api"]["port"] == 3000


def test_merging_the_same_services_twice_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "[mesh]\nname = 'x'\n")
    merge_services(path, {"web": {"port": 8080}}, comment="c")
    once = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    again = merge_services(path, {"web": {"port": 8080}}, comment="c")
    assert again.added == [] and set(again.skipped) == {"web"}
    assert path.read_bytes() == once and path.stat().st_mtime_ns == mtime


def test_a_file_ending_in_a_newline_gets_one_blank_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[mesh]\nname = 'x'\n")
    merge_services(path, {"web": {"port": 8080}}, comment="two\nlines")
    assert path.read_text(encoding="utf-8") == (
        "[mesh]\nname = 'x'\n\n# two\n# lines\n[services.web]\nport = 8080\n"
    )


def test_services_as_an_inline_table_are_extended_in_place(tmp_path: Path) -> None:
    original = '# top\nservices = { api = { port = 3000 } }   # inline\n\n[mesh]\nname = "x"\n'
    path = write(tmp_path, original)
    result = merge_services(path, {"web": {"port": 8080}}, comment="c")
    assert result.added == ["web"]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# top\n") and text.endswith('   # inline\n\n[mesh]\nname = "x"\n')
    assert set(load_config(path).config.services) == {"api", "web"}


def test_a_missing_file_is_created_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "devmesh.toml"
    result = merge_services(path, {"web": {"port": 8080}}, comment="c")
    assert result.added == ["web"]
    assert load_config(path).config.services["web"].port == 8080


def test_a_result_that_would_not_load_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, USER_CONFIG)
    os.chmod(path, 0o640)
    before = path.read_bytes()
    with pytest.raises(WritebackError) as caught:
        merge_services(path, {"web": {"port": 8080, "depends_on": ["nowhere"]}}, comment="c")
    message = str(caught.value)
    assert "was not changed" in message
    assert "depends on 'nowhere'" in message and str(path) in message
    assert ".tmp" not in message  # problems name the user's file, not the temporary
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_an_existing_config_that_does_not_load_is_not_written(tmp_path: Path) -> None:
    broken = '[services.api]\nport = "not a port"\n'
    path = write(tmp_path, broken)
    with pytest.raises(WritebackError, match="would not load"):
        merge_services(path, {"web": {"port": 8080}}, comment="c")
    assert path.read_text(encoding="utf-8") == broken


def test_yaml_configs_are_refused_with_what_to_do(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  api:\n    port: 3000\n", name="devmesh.yaml")
    with pytest.raises(WritebackError) as caught:
        merge_services(path, {"web": {"port": 8080}}, comment="c")
    assert "supports devmesh.toml only" in str(caught.value) and "by hand" in str(caught.value)
    with pytest.raises(WritebackError, match=r"supports devmesh.toml only"):
        set_table(path, ("discovery",), {"docker": True})
    assert path.read_text(encoding="utf-8") == "services:\n  api:\n    port: 3000\n"


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[mesh\nname = 1\n")
    with pytest.raises(WritebackError, match="is not valid TOML"):
        merge_services(path, {"web": {"port": 8080}}, comment="c")


def test_mode_is_kept_and_symlinks_are_followed(tmp_path: Path) -> None:
    real = write(tmp_path, "[mesh]\nname = 'x'\n", name="real.toml")
    os.chmod(real, 0o640)
    link = tmp_path / "devmesh.toml"
    link.symlink_to(real.name)
    merge_services(link, {"web": {"port": 8080}}, comment="c")
    assert link.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert "[services.web]" in real.read_text(encoding="utf-8")


def test_set_table_adds_an_inline_table_and_keeps_everything_else(tmp_path: Path) -> None:
    original = "# mine\n[discovery]   # followed live\ndocker = true # yes\n\n[mesh]\nname = 'x'\n"
    path = write(tmp_path, original)
    assert set_table(path, ("discovery", "kubernetes"), {"context": "kind-dev", "namespace": "shop"})
    text = path.read_text(encoding="utf-8")
    assert text == (
        "# mine\n[discovery]   # followed live\ndocker = true # yes\n"
        'kubernetes = {context = "kind-dev", namespace = "shop"}\n'
        "\n[mesh]\nname = 'x'\n"
    )
    kubernetes = load_config(path).config.discovery.kubernetes
    assert kubernetes is not None and kubernetes.context == "kind-dev"
    mtime = path.stat().st_mtime_ns
    assert not set_table(path, ("discovery", "kubernetes"), {"context": "kind-dev", "namespace": "shop"})
    assert path.stat().st_mtime_ns == mtime
    assert set_table(path, ("discovery", "kubernetes"), {"namespace": None})
    assert tomllib.loads(path.read_text(encoding="utf-8"))["discovery"]["kubernetes"] == {
        "context": "kind-dev"
    }


def test_set_table_appends_a_missing_section(tmp_path: Path) -> None:
    original = USER_CONFIG + "\n"
    path = write(tmp_path, original)
    assert set_table(path, ("discovery",), {"docker": True})
    text = path.read_text(encoding="utf-8")
    assert text.startswith(original)
    assert tomllib.loads(text)["discovery"] == {"docker": True}
    assert load_config(path).config.discovery.docker is True


def test_set_table_refuses_a_key_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[discovery]\ndocker = true\n")
    with pytest.raises(WritebackError, match=r"discovery.docker holds a bool, not a table"):
        set_table(path, ("discovery", "docker", "x"), {"y": 1})


def test_set_table_validates(tmp_path: Path) -> None:
    path = write(tmp_path, "[discovery]\ndocker = true\n")
    with pytest.raises(WritebackError, match="would not load"):
        set_table(path, ("discovery",), {"dockr": True})
    assert path.read_text(encoding="utf-8") == "[discovery]\ndocker = true\n"


def test_services_toml_is_what_a_yaml_user_pastes(tmp_path: Path) -> None:
    text = services_toml({"web": {"port": 8080, "env": {"A": "1"}}}, comment="paste me")
    assert text == '# paste me\n[services.web]\nport = 8080\nenv = {A = "1"}\n'
    path = write(tmp_path, text)
    assert load_config(path).config.services["web"].env == {"A": "1"}


def test_a_failing_rename_leaves_the_original_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, USER_CONFIG)

    def refuse(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        merge_services(path, {"web": {"port": 8080}}, comment="c")
    assert path.read_text(encoding="utf-8") == USER_CONFIG
    assert temporaries(tmp_path) == []


KILLED_WRITER = """
import sys, time
from pathlib import Path
from devmesh.config.writeback import atomic_write_text

def hang(candidate):
    # The new text is on disk in the temporary; say so, then wait to be killed before the rename.
    print(candidate, flush=True)
    time.sleep(60)

atomic_write_text(Path(sys.argv[1]), "[mesh]\\nname = 'new'\\n" * 1000, validate=hang)
"""


def test_a_writer_killed_mid_write_leaves_the_original_and_its_temporary_is_cleaned(tmp_path: Path) -> None:
    path = write(tmp_path, USER_CONFIG)
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        temporary = Path(writer.stdout.readline().strip())
        assert temporary.parent == tmp_path and temporary.is_file()
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)
        if writer.stdout is not None:
            writer.stdout.close()
    assert path.read_text(encoding="utf-8") == USER_CONFIG
    assert temporaries(tmp_path) == [temporary.name]  # harmless: devmesh never reads it
    assert load_config(path).config.mesh.name == "shop"

    atomic_write_text(path, "[mesh]\nname = 'after'\n")
    assert temporaries(tmp_path) == []  # the next write removed the dead writer's leftover
    assert load_config(path).config.mesh.name == "after"


def test_atomic_write_creates_a_file_with_the_umask_mode(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    old = os.umask(0o027)
    try:
        atomic_write_text(path, "127.0.0.1 localhost\n")
    finally:
        os.umask(old)
    assert path.read_text(encoding="utf-8") == "127.0.0.1 localhost\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
