"""Reading a compose file into devmesh terms: ports, healthchecks, depends_on, environment, variables."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from devmesh.compose.mapping import ComposeError, ComposeHealth, read_compose


def project(tmp_path: Path, text: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "docker-compose.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return read_compose(path, environ=environ or {})


def one(tmp_path: Path, service: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    text = "services:\n  app:\n" + textwrap.indent(textwrap.dedent(service), "    ")
    (mapped,) = project(tmp_path, text, environ).services
    return mapped


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ('["8080:80"]', (8080, 80)),
        ('["127.0.0.1:8080:80/tcp"]', (8080, 80)),
        ('["[::1]:8080:80"]', (8080, 80)),
        ('["9090-9091:8080-8081"]', (9090, 8080)),
        ('["53:53/udp", "8081:81"]', (8081, 81)),
        ('[80, "127.0.0.1::81", "7000:70"]', (7000, 70)),
        ("[{target: 80, published: 8080}]", (8080, 80)),
        ('[{target: 80, published: "8080-8081", host_ip: 127.0.0.1}]', (8080, 80)),
        ("[{target: 80}]", (None, None)),
        ("[{target: 53, published: 53, protocol: udp}]", (None, None)),
    ],
)
def test_published_ports(tmp_path: Path, ports: str, expected: tuple[int | None, int | None]) -> None:
    mapped = one(tmp_path, f"image: x\nports: {ports}\n")
    assert (mapped.port, mapped.target_port) == expected


def test_several_published_ports_keep_the_first(tmp_path: Path) -> None:
    mapped = one(tmp_path, 'image: x\nports: ["8080:80", "8443:443"]\n')
    assert mapped.port == 8080 and mapped.other_ports == (8443,)


def test_variables_in_ports_from_environment_then_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WEB_PORT=9000\nHOST=127.0.0.1\n", encoding="utf-8")
    service = 'image: x\nports: ["${HOST}:${WEB_PORT:-8080}:${INNER-80}"]\n'
    assert (one(tmp_path, service).port, one(tmp_path, service).target_port) == (9000, 80)
    assert one(tmp_path, service, {"WEB_PORT": "9100"}).port == 9100
    assert one(tmp_path, service, {"WEB_PORT": ""}).port == 8080  # `:-` treats empty as unset
    mapped = one(tmp_path, 'image: x\nports: ["80${A:+8}${B+9}:80"]\nenvironment: ["X=$$HOME"]\n', {"A": "1"})
    assert mapped.port == 808 and mapped.environment == {"X": "$HOME"}


def test_a_required_variable_names_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ComposeError) as caught:
        one(tmp_path, 'image: x\nports: ["${PORT:?set the web port}:80"]\n')
    message = str(caught.value)
    assert "docker-compose.yml: services.app.ports[0]" in message and "set the web port" in message


@pytest.mark.parametrize(
    ("test", "expected_path"),
    [
        ('["CMD", "curl", "-f", "http://localhost:80/health"]', "/health"),
        ('["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1/ready?full=1"]', "/ready?full=1"),
        ('["CMD-SHELL", "curl -f http://localhost/ || exit 1"]', "/"),
        ('"wget -q --spider http://localhost:80/ping"', "/ping"),
        ('["CMD", "wget", "-qO-", "http://localhost/"]', "/"),
    ],
)
def test_http_healthchecks_become_http_probes(tmp_path: Path, test: str, expected_path: str) -> None:
    mapped = one(tmp_path, f'image: x\nports: ["8080:80"]\nhealthcheck:\n  test: {test}\n')
    assert mapped.health is not None and mapped.health.http_path == expected_path


@pytest.mark.parametrize(
    ("test", "argv"),
    [
        (
            '["CMD", "curl", "-f", "http://localhost:9000/"]',
            ("curl", "-f", "http://localhost:9000/"),
        ),  # not the published port
        ('["CMD", "curl", "-H", "X: y", "http://localhost/"]', ("curl", "-H", "X: y", "http://localhost/")),
        ('["CMD", "pg_isready", "-U", "postgres"]', ("pg_isready", "-U", "postgres")),
        ('["CMD-SHELL", "redis-cli ping | grep PONG"]', ("/bin/sh", "-c", "redis-cli ping | grep PONG")),
        ('"curl -f http://localhost/ && true"', ("/bin/sh", "-c", "curl -f http://localhost/ && true")),
    ],
)
def test_other_healthchecks_run_in_the_container(tmp_path: Path, test: str, argv: tuple[str, ...]) -> None:
    mapped = one(tmp_path, f'image: x\nports: ["8080:80"]\nhealthcheck:\n  test: {test}\n')
    assert mapped.health == ComposeHealth(test_argv=argv)


def test_healthcheck_timings_and_disable(tmp_path: Path) -> None:
    mapped = one(
        tmp_path,
        'image: x\nhealthcheck:\n  test: ["CMD", "true"]\n  interval: 1m30s\n  timeout: 500ms\n  retries: 4\n',
    )
    assert mapped.health == ComposeHealth(test_argv=("true",), interval_s=90.0, timeout_s=0.5, retries=4)
    assert one(tmp_path, "image: x\nhealthcheck: {disable: true}\n").health_disabled
    assert one(tmp_path, 'image: x\nhealthcheck: {test: ["NONE"]}\n').health_disabled


@pytest.mark.parametrize(
    ("healthcheck", "key", "says"),
    [
        ('{test: ["RUN", "x"]}', "services.app.healthcheck.test", '"CMD", "CMD-SHELL" or "NONE"'),
        ('{test: ["CMD", "x"], interval: soon}', "services.app.healthcheck.interval", "not a duration"),
        ('{test: ["CMD", "x"], retries: 0}', "services.app.healthcheck.retries", "at least 1"),
        ('{test: ["CMD"]}', "services.app.healthcheck.test", "is empty"),
    ],
)
def test_bad_healthchecks_name_the_key(tmp_path: Path, healthcheck: str, key: str, says: str) -> None:
    with pytest.raises(ComposeError) as caught:
        one(tmp_path, f"image: x\nhealthcheck: {healthcheck}\n")
    assert f"docker-compose.yml: {key}:" in str(caught.value) and says in str(caught.value)


def test_depends_on_list_and_map_forms(tmp_path: Path) -> None:
    mapped = project(
        tmp_path,
        """\
        services:
          db: {image: postgres}
          cache: {image: redis}
          api:
            image: api
            depends_on:
              db: {condition: service_healthy}
              cache: {condition: service_started, restart: true}
          web: {image: web, depends_on: [api]}
        """,
    ).by_key()
    assert mapped["api"].depends_on == ("db", "cache")
    assert mapped["web"].depends_on == ("api",)


@pytest.mark.parametrize(
    ("service", "key", "says"),
    [
        ("image: x\ndepends_on: [nowhere]\n", "services.app.depends_on", "'nowhere' is not a service"),
        (
            "image: x\ndepends_on: {app2: {condition: later}}\n",
            "services.app.depends_on.app2.condition",
            "'later'",
        ),
        ('image: x\nports: ["http:80"]\n', "services.app.ports[0]", "'http' is not a port"),
        ("image: x\nports: 8080\n", "services.app.ports", "must be a list"),
        ("image: x\nenvironment: 3\n", "services.app.environment", "KEY=value"),
        ("image: x\nrestart: sometimes\n", "services.app.restart", "'sometimes'"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, service: str, key: str, says: str) -> None:
    with pytest.raises(ComposeError) as caught:
        one(tmp_path, service)
    assert str(caught.value).startswith(f"{tmp_path / 'docker-compose.yml'}: {key}: ")
    assert says in str(caught.value)


def test_environment_forms_restart_and_stop_grace(tmp_path: Path) -> None:
    listed = one(tmp_path, 'image: x\nenvironment: ["A=1", "B=x=y", "FROM_SHELL"]\nrestart: unless-stopped\n')
    assert listed.environment == {"A": "1", "B": "x=y"} and listed.restart == "always"
    mapped = one(tmp_path, "image: x\nenvironment: {A: 1, B: true, C: null}\nstop_grace_period: 1m\n")
    assert mapped.environment == {"A": "1", "B": "true"} and mapped.stop_timeout_s == 60.0


def test_profiles_extends_and_names(tmp_path: Path) -> None:
    text = """\
        name: My_Shop
        services:
          Web_App: {image: x, extends: {service: base}}
          debug: {image: y, profiles: [debug], depends_on: [Web_App]}
          tools: {image: z, depends_on: [debug]}
        """
    mapped = project(tmp_path, text)
    assert mapped.name == "my-shop"
    assert [(s.key, s.name) for s in mapped.services] == [("Web_App", "web-app"), ("tools", "tools")]
    assert mapped.by_key()["tools"].depends_on == ()
    assert any("`extends` is not supported" in warning for warning in mapped.warnings)
    assert any("profiles (debug)" in warning for warning in mapped.warnings)
    with_debug = project(tmp_path, text, {"COMPOSE_PROFILES": "debug"})
    assert [s.key for s in with_debug.services] == ["Web_App", "debug", "tools"]


def test_invalid_yaml_and_missing_services(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"not valid YAML \(line 3\)"):
        project(tmp_path, "services:\n  a: [\n")
    with pytest.raises(ComposeError, match=r"services: missing"):
        project(tmp_path, "version: '3'\n")


# Compose reads YAML 1.2; PyYAML's safe_load reads YAML 1.1, where these unquoted values differ.


@pytest.mark.parametrize(("restart", "expected"), [("no", "never"), ("'no'", "never"), ("always", "always")])
def test_restart_no_unquoted_is_the_string_no(tmp_path: Path, restart: str, expected: str) -> None:
    assert one(tmp_path, f"image: x\nrestart: {restart}\n").restart == expected


def test_unquoted_port_mappings_are_not_base_60_numbers(tmp_path: Path) -> None:
    # YAML 1.1 reads 2222:22 as 2222*60+22 and 1025:25 as 61525: ints, taken for container-only ports.
    mapped = one(tmp_path, "image: x\nports:\n  - 2222:22\n  - 1025:25\n  - 80\n")
    assert (mapped.port, mapped.target_port, mapped.other_ports) == (2222, 22, (1025,))
    mapped = one(tmp_path, "image: x\nports: [5:30]\n")
    assert (mapped.port, mapped.target_port) == (5, 30)


def test_environment_values_read_as_compose_reads_them(tmp_path: Path) -> None:
    mapped = one(
        tmp_path,
        "image: x\nenvironment:\n"
        "  A: yes\n  B: on\n  C: off\n  D: no\n  E: y\n  F: true\n  G: False\n"
        "  H: 0755\n  I: 0o17\n  J: 0x1F\n  K: 1.5\n  L: 2001-12-14\n  M: 1_000\n  N: 1:30\n",
    )
    assert mapped.environment == {
        "A": "yes",
        "B": "on",
        "C": "off",
        "D": "no",
        "E": "y",
        "F": "true",
        "G": "false",
        "H": "755",
        "I": "15",
        "J": "31",
        "K": "1.5",
        "L": "2001-12-14",
        "M": "1_000",
        "N": "1:30",
    }


def test_yaml_12_booleans_still_disable_a_healthcheck(tmp_path: Path) -> None:
    assert one(tmp_path, "image: x\nhealthcheck: {disable: true}\n").health_disabled
    assert one(tmp_path, "image: x\nhealthcheck: {disable: TRUE}\n").health_disabled


def test_the_yaml_12_reader_leaves_pyyaml_alone(tmp_path: Path) -> None:
    import yaml

    one(tmp_path, "image: x\nrestart: no\n")
    assert yaml.safe_load("a: no\nb: 1:30\n") == {"a": False, "b": 90}


def test_a_bad_explicit_integer_is_a_yaml_error(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"not valid YAML \(line 3\): 'many' is not an integer"):
        project(tmp_path, "services:\n  app:\n    healthcheck: {retries: !!int many}\n")
