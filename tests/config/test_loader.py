"""Loading devmesh.toml / devmesh.yaml: overlays, variables, and errors that say where and how to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from devmesh.config import ConfigError, find_config, load_config


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return [str(problem) for problem in caught.value.problems]


def test_full_design_example_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devmesh.toml",
        """
[mesh]
name = "shop"
domain = "localhost"
secret = "${DEVMESH_SECRET}"
share = false
version_policy = "reject"

[proxy]
listen = "127.0.0.1:7080"
https = "127.0.0.1:7443"
admin = "127.0.0.1:7070"
mesh = "0.0.0.0:7090"
mesh_tls = { cert = "team/agent.crt", key = "team/agent.key", ca = "team/ca.crt" }
allow_fault_header = false
timeout = "30s"
retries = 2
access_log = "json"

[services.db]
port = 5432

[services.api]
command = "uvicorn app:app --port $PORT"
cwd = "services/api"
port = 3000
env = { DATABASE_URL = "postgres://localhost/shop" }
version = "1.4.2"
hosts = ["api", "api-v1", "*.tenant"]
routes = ["/api/*"]
depends_on = ["db"]
restart = "on-failure"
watch = ["src/**/*.py"]
health = { http = "/health", interval = "2s", timeout = "1s", unhealthy_after = 3 }
requires = ">=1.4,<2"
remote = "https://api.staging.shop.dev"
mirror = "https://api.shadow.shop.dev"
share = true
lb = "round_robin"
sticky = "cookie"

[services.payments]
command = ["python", "-m", "payments"]

[faults.slow-payments]
service = "payments"
delay = "100ms..800ms"
abort = 503
rate = 0.2
paths = ["/charge*"]
headers = { "x-chaos" = "on" }
enabled = true

[scenarios.payments-outage]
faults = ["slow-payments"]
outage = ["payments"]
duration = "60s"

[peers]
discovery = "mdns"
interfaces = []
static = ["10.0.0.5:7090"]
hub = "https://hub.example:7000"
hub_token = "${DEVMESH_HUB_TOKEN:-none}"

[discovery]
docker = false
kubernetes = { context = "kind-dev", namespace = "default" }

[observe]
otlp = "http://127.0.0.1:4318"
requests_kept = 1000

[engine]
kind = "builtin"
nginx = "nginx"
""",
    )
    loaded = load_config(path, environ={"DEVMESH_SECRET": "s3cret"})
    config = loaded.config
    assert config.mesh.secret == "s3cret"
    assert config.peers.hub_token == "none"
    assert config.proxy.timeout == 30.0
    assert str(config.proxy.listen) == "127.0.0.1:7080"
    api = config.services["api"]
    assert api.health is not None and api.health.interval == 2.0
    assert api.hosts == ["api", "api-v1", "*.tenant"]
    fault = config.faults["slow-payments"]
    assert fault.delay is not None and (fault.delay.low_s, fault.delay.high_s) == (0.1, 0.8)
    assert loaded.mesh_name == "shop"
    assert loaded.warnings == ()


def test_mesh_name_defaults_to_the_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.toml", '[services.api]\ncommand = "x"\n')
    assert load_config(path, environ={}).mesh_name == tmp_path.name


def test_yaml_with_the_same_schema(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devmesh.yaml",
        "mesh:\n  name: y\nservices:\n  api:\n    command: run\n    health:\n      http: /health\n      intervall: 2s\n",
    )
    problems = errors_of(path, environ={})
    assert problems == [
        f'{path}:8: services.api.health.intervall: unknown key (did you mean "interval"?)',
    ]


def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path, "devmesh.toml", '[mesh]\nname = "x"\n\n[services.api]\ncomand = "run"\nport = 3000\n'
    )
    assert errors_of(path, environ={}) == [
        f'{path}:5: services.api.comand: unknown key (did you mean "command"?)'
    ]


def test_unknown_section_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.toml", '[servics.api]\ncommand = "run"\n')
    (problem,) = errors_of(path, environ={})
    assert problem.startswith(f"{path}:1: servics: unknown key")
    assert 'did you mean "services"?' in problem


def test_bad_value_in_an_inline_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devmesh.toml",
        '[services.api]\ncommand = "run"\nhealth = { http = "/h", interval = "soon" }\n',
    )
    (problem,) = errors_of(path, environ={})
    assert problem.startswith(f"{path}:3: services.api.health.interval:")
    assert "'soon' is not a duration" in problem


def test_dangling_dependency_suggests_the_service(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devmesh.toml",
        '[services.db]\nport = 5432\n[services.api]\ncommand = "run"\ndepends_on = ["dbb"]\n',
    )
    (problem,) = errors_of(path, environ={})
    assert problem.startswith(f"{path}:5: services.api.depends_on:")
    assert 'did you mean "db"?' in problem


def test_dependency_cycle_is_shown(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devmesh.toml",
        '[services.a]\ncommand = "x"\ndepends_on = ["b"]\n[services.b]\ncommand = "x"\ndepends_on = ["a"]\n',
    )
    (problem,) = errors_of(path, environ={})
    assert "cycle: a -> b -> a" in problem


def test_duplicate_host_and_port(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.toml", "[services.a]\nport = 80\n[services.b]\nport = 80\n")
    (problem,) = errors_of(path, environ={})
    assert "port 80 is given to both a and b" in problem
    path = write(
        tmp_path, "devmesh.toml", '[services.a]\nport = 80\n[services.b]\nport = 81\nhosts = ["a"]\n'
    )
    (problem,) = errors_of(path, environ={})
    assert "host 'a' is claimed by both a and b" in problem


def test_service_needs_something_to_run_or_reach(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.toml", '[services.a]\nversion = "1"\n')
    (problem,) = errors_of(path, environ={})
    assert f"{path}:1: services.a:" in problem
    assert "needs a command" in problem


def test_health_needs_exactly_one_probe(tmp_path: Path) -> None:
    path = write(
        tmp_path, "devmesh.toml", '[services.a]\ncommand = "x"\nhealth = { http = "/h", tcp = true }\n'
    )
    (problem,) = errors_of(path, environ={})
    assert "exactly one of" in problem and "found http, tcp" in problem


def test_toml_syntax_error_has_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.toml", '[mesh]\nname = "x"\n\n[services.api\ncommand = "x"\n')
    (problem,) = errors_of(path, environ={})
    assert problem.startswith(f"{path}:4: not valid TOML")


def test_yaml_syntax_error_has_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.yaml", "services:\n  api:\n    command: [x\n")
    (problem,) = errors_of(path, environ={})
    assert problem.startswith(f"{path}:") and "not valid YAML" in problem


def test_variables_from_environment_then_dotenv(tmp_path: Path) -> None:
    write(
        tmp_path, ".env", "# comment\nAPI_VERSION=from-dotenv\nexport TOKEN='quoted value'\nSHADOWED=dotenv\n"
    )
    path = write(
        tmp_path,
        "devmesh.toml",
        """
[services.api]
command = "run --port $PORT"
version = "${API_VERSION}"
env = { TOKEN = "${TOKEN}", SHADOWED = "${SHADOWED}", DEFAULTED = "${MISSING:-fallback}", DOLLAR = "$$HOME" }
""",
    )
    config = load_config(path, environ={"SHADOWED": "environment"}).config
    api = config.services["api"]
    assert api.version == "from-dotenv"
    assert api.command == "run --port $PORT"  # left for the shell
    assert api.env == {
        "TOKEN": "quoted value",
        "SHADOWED": "environment",
        "DEFAULTED": "fallback",
        "DOLLAR": "$HOME",
    }


def test_unset_variable_warns_and_required_one_fails(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.toml", '[mesh]\nsecret = "${NOPE}"\n[services.a]\ncommand = "x"\n')
    loaded = load_config(path, environ={})
    assert loaded.config.mesh.secret == ""
    assert loaded.warnings == ("devmesh.toml: mesh.secret: ${NOPE} is not set; using an empty string",)
    path = write(tmp_path, "devmesh.toml", '[mesh]\nsecret = "${NOPE:?ask the team lead}"\n')
    (problem,) = errors_of(path, environ={})
    assert problem.startswith(f"{path}:2: mesh.secret: ${{NOPE}} is not set: ask the team lead")


def test_overlays_merge_in_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devmesh.toml",
        '[proxy]\nretries = 1\n[services.api]\ncommand = "run"\nversion = "base"\nenv = { A = "1", B = "1" }\n',
    )
    write(tmp_path, "devmesh.staging.toml", '[services.api]\nversion = "staging"\nenv = { B = "2" }\n')
    write(tmp_path, "devmesh.local.toml", '[services.api]\nenv = { C = "3" }\n[proxy]\nretries = 4\n')
    loaded = load_config(path, env_name="staging", environ={})
    api = loaded.config.services["api"]
    assert api.version == "staging"
    assert api.env == {"A": "1", "B": "2", "C": "3"}
    assert loaded.config.proxy.retries == 4
    assert [p.name for p in loaded.files] == ["devmesh.toml", "devmesh.staging.toml", "devmesh.local.toml"]
    # DEVMESH_ENV chooses the overlay when --env is not given.
    assert load_config(path, environ={"DEVMESH_ENV": "staging"}).env_name == "staging"


def test_error_in_an_overlay_names_the_overlay(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.toml", '[services.api]\ncommand = "run"\n')
    local = write(tmp_path, "devmesh.local.toml", '\n\n[services.api]\nrestart = "maybe"\n')
    (problem,) = errors_of(path, environ={})
    assert problem.startswith(f"{local}:4: services.api.restart")


def test_missing_env_overlay_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "devmesh.toml", '[services.api]\ncommand = "run"\n')
    (problem,) = errors_of(path, env_name="prod", environ={})
    assert "environment 'prod' has no overlay file" in problem
    assert "devmesh.prod.toml" in problem


def test_find_config_walks_up_and_honours_explicit_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "devmesh.toml", "")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.delenv("DEVMESH_CONFIG", raising=False)
    assert find_config(deep) == path
    other = write(deep, "other.toml", "")
    assert find_config(deep, explicit=other) == other
    monkeypatch.setenv("DEVMESH_CONFIG", str(other))
    assert find_config(tmp_path) == other
    with pytest.raises(ConfigError, match="does not exist"):
        find_config(explicit=tmp_path / "nope.toml")


def test_no_config_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVMESH_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="devmesh init"):
        find_config(tmp_path)


def test_mirror_is_a_url_or_a_peer(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devmesh.toml",
        '[services.a]\nport = 3000\nmirror = "peer=alice"\n[services.b]\nport = 3001\nmirror = "http://shadow:8080/"\n',
    )
    services = load_config(path, environ={}).config.services
    assert services["a"].mirror == "peer=alice"
    assert services["b"].mirror == "http://shadow:8080"
    for wrong, said in (("shadow.example", "neither a URL nor a peer"), ("peer=", "does not name a peer")):
        path = write(tmp_path, "devmesh.toml", f'[services.a]\nport = 3000\nmirror = "{wrong}"\n')
        (problem,) = errors_of(path, environ={})
        assert "services.a.mirror" in problem and said in problem, problem


def test_routes_are_paths_of_safe_characters_with_an_optional_trailing_glob(tmp_path: Path) -> None:
    good = ["/", "/*", "/api/*", "/api/", "/api", "/v2.1/x_y~z%20-w", "/api*"]
    path = write(
        tmp_path, "devmesh.toml", f"[services.a]\nport = 3000\nroutes = {good!r}\n".replace("'", '"')
    )
    assert load_config(path, environ={}).config.services["a"].routes == good
    for wrong in ["/x { return 200; }", "/a;b", "/a b", "/a*b", "/a/**", "/a#b", "/a'b", "api"]:
        path = write(tmp_path, "devmesh.toml", f"[services.a]\nport = 3000\nroutes = [{wrong!r}]\n")
        (problem,) = errors_of(path, environ={})
        assert "services.a.routes" in problem and "path prefix" in problem, problem


def test_fault_paths_keep_their_globs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devmesh.toml",
        '[services.a]\nport = 3000\n[faults.f]\nservice = "a"\nabort = 503\npaths = ["/charge*", "/api/*/items"]\n',
    )
    assert load_config(path, environ={}).config.faults["f"].paths == ["/charge*", "/api/*/items"]


def test_url_hosts_are_host_names_or_addresses(tmp_path: Path) -> None:
    for good in [
        "https://api.staging.example:8443",
        "http://127.0.0.1:4000",
        "https://[::1]:9443",
        "http://my_svc/v1",
    ]:
        path = write(tmp_path, "devmesh.toml", f'[services.a]\nremote = "{good}"\n')
        assert load_config(path, environ={}).config.services["a"].remote == good
    for wrong in [
        "http://evil;{}.example",
        "http://a.example:80;x",
        "http://a.example:x",
        "http://user@a.example",
        "http://1.2.3",
        "http://a.example/ x",
        "http://",
    ]:
        path = write(tmp_path, "devmesh.toml", f'[services.a]\nremote = "{wrong}"\n')
        (problem,) = errors_of(path, environ={})
        assert "services.a.remote" in problem and "is not a URL" in problem, problem
