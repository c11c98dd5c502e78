"""A docker-compose file read into devmesh services: ports, healthchecks, depends_on, environment.

One mapping for `devmesh compose import`, `devmesh compose up` and `devmesh init`. What each compose key
becomes is in docs/compose.md; in short:

- the first published TCP port (short or long syntax) is the service's `port`; a service that publishes
  none still runs (others may depend on it) but gets no host name: nothing on this machine reaches it;
- `healthcheck.test` that fetches `http://localhost:<the published container port>/PATH` with curl or wget
  becomes `health.http = "/PATH"`; any other test runs inside the container through `compose exec`;
  interval / timeout / retries become interval / timeout / unhealthy_after; `disable` or NONE: no check;
- `depends_on` (list or map; every condition waits for health, which is what devmesh does anyway);
- `environment` (list or map) becomes `env`;
- `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR:+alt}`, `$VAR` and `$$` expand
  everywhere, from the environment first and from `.env` beside the compose file second, as compose does.

The file is read as YAML 1.2, as compose reads it (PyYAML alone reads YAML 1.1): `no`, `yes`, `on` and
`off` are strings, `2222:22` is a string rather than a base-60 number, and `0755` is the decimal 755.

Not supported, and said so: `extends`, `include`, override files (docker-compose.override.yml), several
`-f` files. Services under `profiles` are left out unless COMPOSE_PROFILES names one of their profiles.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devmesh.config.scaffold import COMPOSE_NAMES, service_name

DEFAULT_STOP_TIMEOUT_S = 10.0  # compose's own default for `stop`
DEFAULT_HEALTH_TIMEOUT_S = 30.0  # compose's own default for `healthcheck.timeout`

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\$\$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_FACTORS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LOCAL_URL_RE = re.compile(r"^https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?::(\d+))?(/[^\s]*)?$")
_CURL_CLUSTER_RE = re.compile(r"^-[fsSLI]+$")
_WGET_CLUSTER_RE = re.compile(r"^-[qS]+$")
_UNSUPPORTED_TOP = ("include",)
_UNSUPPORTED_SERVICE = ("extends",)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's scalars (what compose's YAML library reads):
    booleans are only true / false (True, TRUE, ...), integers are decimal, 0o octal or 0x hex, and there
    are no base-60 numbers, timestamps, yes / no / on / off or `=` values: those stay strings."""


_YAML11_ONLY = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:value",
}
# A fresh dict of fresh lists: add_implicit_resolver would otherwise append to SafeLoader's own lists.
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_yaml12_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "expected an integer", node.start_mark)
    text = str(loader.construct_scalar(node)).strip()
    try:
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)  # "0755" is 755: YAML 1.2 has no leading-zero octal
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not an integer", node.start_mark
        ) from None


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_yaml12_int)


def load_yaml12(text: str) -> Any:
    """A YAML document read as compose reads it (YAML 1.2 core schema)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: no arbitrary objects


class ComposeError(ValueError):
    """The compose file cannot be read; the message names the file and the key, and says how to fix it."""

    def __init__(self, path: Path, key_path: Sequence[str | int], message: str) -> None:
        key = _key_text(key_path)
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")
        self.path = path
        self.key_path = tuple(key_path)


@dataclass(frozen=True)
class ComposeHealth:
    """A compose healthcheck, mapped: an HTTP path on the published port, or a command in the container."""

    http_path: str | None = None
    test_argv: tuple[str, ...] = ()  # run inside the container (`compose exec -T SERVICE ...`)
    interval_s: float | None = None
    timeout_s: float | None = None
    retries: int | None = None


@dataclass(frozen=True)
class ComposeService:
    key: str  # the name in the compose file
    name: str  # the devmesh service (and host) name
    port: int | None  # the first published TCP port on the host
    target_port: int | None  # the container port it is published from
    other_ports: tuple[int, ...] = ()
    health: ComposeHealth | None = None
    health_disabled: bool = False
    depends_on: tuple[str, ...] = ()  # compose keys
    environment: dict[str, str] = field(default_factory=dict)
    restart: str | None = None  # devmesh's always | on-failure | never
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S


@dataclass(frozen=True)
class ComposeProject:
    path: Path
    name: str  # the compose project name: `name:`, COMPOSE_PROJECT_NAME or the folder's name
    services: list[ComposeService]
    warnings: list[str] = field(default_factory=list)

    def by_key(self) -> dict[str, ComposeService]:
        return {service.key: service for service in self.services}


def find_compose_file(start: Path, explicit: str | os.PathLike[str] | None = None) -> Path:
    """The compose file: `explicit` (-f), else COMPOSE_FILE, else the first standard name walking up."""
    chosen = explicit if explicit is not None else (os.environ.get("COMPOSE_FILE") or None)
    if chosen is not None:
        first = str(chosen).split(os.pathsep)[0]
        path = Path(first).expanduser()
        if not path.is_absolute():
            path = start / path
        if not path.is_file():
            raise ComposeError(path, (), "no such compose file (check -f / COMPOSE_FILE)")
        return path.resolve()
    directory = start.resolve()
    for folder in (directory, *directory.parents):
        for name in COMPOSE_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise ComposeError(
        directory, (), f"no {' / '.join(COMPOSE_NAMES)} here or in any folder above; pass -f FILE"
    )


def read_compose(path: Path, *, environ: Mapping[str, str] | None = None) -> ComposeProject:
    """Read and map a compose file. Raises ComposeError naming the file and key of the first problem."""
    path = path.resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ComposeError(path, (), f"cannot read it: {error.strerror}") from None
    try:
        document = load_yaml12(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ComposeError(path, (), f"not valid YAML{line}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ComposeError(path, (), f"not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ComposeError(path, (), "the top level must be a mapping with a `services:` key")
    environ = dict(os.environ) if environ is None else dict(environ)
    from devmesh.config.loader import _read_dotenv

    variables = {**_read_dotenv(path.parent / ".env"), **environ}
    warnings: list[str] = []
    document = _interpolate(document, variables, path, (), warnings)
    for key in _UNSUPPORTED_TOP:
        if key in document:
            warnings.append(
                f"{path.name}: `{key}` is not supported by devmesh; its services are not imported"
            )
    override = path.with_name(f"{path.stem}.override{path.suffix}")
    if override.is_file():
        warnings.append(f"{override.name} is not merged by devmesh (override files are not supported)")
    raw_services = document.get("services")
    if raw_services is None:
        raise ComposeError(
            path, ("services",), "missing: a compose file lists its services under `services:`"
        )
    if not isinstance(raw_services, dict):
        raise ComposeError(path, ("services",), "must be a mapping of service name to its settings")

    active_profiles = {p.strip() for p in environ.get("COMPOSE_PROFILES", "").split(",") if p.strip()}
    included: dict[str, dict[str, Any]] = {}
    for key, spec in raw_services.items():
        key = str(key)
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ComposeError(path, ("services", key), "must be a mapping (image:, ports:, ...)")
        profiles = spec.get("profiles")
        if profiles and not active_profiles.intersection(str(p) for p in profiles):
            warnings.append(
                f"{key}: left out: its profiles ({', '.join(map(str, profiles))}) are not in COMPOSE_PROFILES"
            )
            continue
        for unsupported in _UNSUPPORTED_SERVICE:
            if unsupported in spec:
                warnings.append(
                    f"{key}: `{unsupported}` is not supported by devmesh; only the keys here count"
                )
        included[key] = spec

    names: dict[str, str] = {}
    for key in included:
        name = service_name(key)
        clash = next((other for other, taken in names.items() if taken == name), None)
        if clash is not None:
            raise ComposeError(
                path, ("services", key), f"becomes the devmesh name {name!r}, like {clash!r}; rename one"
            )
        names[key] = name

    services = [
        _service(path, key, spec, names[key], set(raw_services), set(included), warnings)
        for key, spec in included.items()
    ]
    project_name = str(document.get("name") or environ.get("COMPOSE_PROJECT_NAME") or path.parent.name)
    return ComposeProject(path, service_name(project_name), services, warnings)


def _service(
    path: Path,
    key: str,
    spec: dict[str, Any],
    name: str,
    all_keys: set[str],
    included: set[str],
    warnings: list[str],
) -> ComposeService:
    where: tuple[str | int, ...] = ("services", key)
    published = _published_ports(path, where, spec.get("ports"))
    port, target = published[0] if published else (None, None)
    health, disabled = _healthcheck(path, (*where, "healthcheck"), spec.get("healthcheck"), target)
    depends: list[str] = []
    for dependency in _depends_on(path, (*where, "depends_on"), spec.get("depends_on")):
        if dependency not in all_keys:
            raise ComposeError(path, (*where, "depends_on"), f"{dependency!r} is not a service in this file")
        if dependency not in included:
            warnings.append(f"{key}: depends on {dependency}, which is left out (profiles); not waited for")
            continue
        depends.append(dependency)
    stop_timeout = DEFAULT_STOP_TIMEOUT_S
    if spec.get("stop_grace_period") is not None:
        stop_timeout = parse_compose_duration(path, (*where, "stop_grace_period"), spec["stop_grace_period"])
    return ComposeService(
        key=key,
        name=name,
        port=port,
        target_port=target,
        other_ports=tuple(host for host, _ in published[1:]),
        health=health,
        health_disabled=disabled,
        depends_on=tuple(depends),
        environment=_environment(path, (*where, "environment"), spec.get("environment")),
        restart=_restart(path, (*where, "restart"), spec.get("restart")),
        stop_timeout_s=stop_timeout,
    )


def _published_ports(path: Path, where: tuple[str | int, ...], ports: Any) -> list[tuple[int, int | None]]:
    """(host port, container port) of each published TCP port, in the file's order."""
    if ports is None:
        return []
    if not isinstance(ports, list):
        raise ComposeError(
            path, (*where, "ports"), 'must be a list ("8080:80" or {target: 80, published: 8080})'
        )
    found: list[tuple[int, int | None]] = []
    for index, entry in enumerate(ports):
        key = (*where, "ports", index)
        if isinstance(entry, dict):
            if str(entry.get("protocol", "tcp")).lower() != "tcp":
                continue
            published = entry.get("published")
            if published is None or published == "":
                continue  # a random host port: nothing stable to route to
            host = _first_port(path, key, str(published))
            target_raw = entry.get("target")
            target = _first_port(path, key, str(target_raw)) if target_raw is not None else None
            found.append((host, target))
            continue
        if isinstance(entry, int) and not isinstance(entry, bool):
            continue  # only a container port: published on a random host port
        if not isinstance(entry, str):
            raise ComposeError(path, key, f'{entry!r} is not a port mapping such as "8080:80"')
        text, _, protocol = entry.partition("/")
        if protocol and protocol.lower() != "tcp":
            continue
        if text.startswith("["):  # [::1]:8080:80
            closing = text.find("]")
            text = text[closing + 2 :] if closing != -1 else text
            parts = text.split(":")
        else:
            parts = text.split(":")
            if len(parts) == 3:
                parts = parts[1:]
            elif len(parts) > 3:  # an IPv6 host address without brackets: the last two are the ports
                parts = parts[-2:]
        if len(parts) == 1:
            _first_port(path, key, parts[0])  # a container port alone, published on a random host port
            continue
        host_text, target_text = parts
        if host_text == "":
            continue  # "127.0.0.1::80": a random host port
        found.append((_first_port(path, key, host_text), _first_port(path, key, target_text)))
    return found


def _first_port(path: Path, key: tuple[str | int, ...], text: str) -> int:
    """A port, or the first of a range ("8080-8081")."""
    first = text.strip().split("-")[0]
    if not first.isdigit() or not 1 <= int(first) <= 65535:
        raise ComposeError(path, key, f"{text!r} is not a port (1-65535) or a range of ports")
    return int(first)


def _healthcheck(
    path: Path, where: tuple[str | int, ...], check: Any, target_port: int | None
) -> tuple[ComposeHealth | None, bool]:
    if check is None:
        return None, False
    if not isinstance(check, dict):
        raise ComposeError(path, where, "must be a mapping (test:, interval:, timeout:, retries:)")
    if check.get("disable") is True:
        return None, True
    test = check.get("test")
    if test is None:
        return None, False  # only timings: the image's own HEALTHCHECK, which devmesh cannot see
    shell: str | None = None
    argv: list[str] = []
    if isinstance(test, str):
        shell = test
    elif isinstance(test, list) and test and all(isinstance(item, str) for item in test):
        kind = test[0].upper()
        if kind == "NONE":
            return None, True
        if kind == "CMD":
            argv = list(test[1:])
        elif kind == "CMD-SHELL":
            shell = " ".join(test[1:])
        else:
            raise ComposeError(
                path,
                (*where, "test"),
                f'starts with {test[0]!r}; compose allows "CMD", "CMD-SHELL" or "NONE"',
            )
    else:
        raise ComposeError(path, (*where, "test"), 'must be a string or a list such as ["CMD", "curl", ...]')
    if (shell is not None and not shell.strip()) or (shell is None and not argv):
        raise ComposeError(path, (*where, "test"), "is empty")
    interval = _optional_duration(path, (*where, "interval"), check.get("interval"))
    timeout = _optional_duration(path, (*where, "timeout"), check.get("timeout"))
    retries = check.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 1):
        raise ComposeError(path, (*where, "retries"), f"{retries!r} is not a whole number of at least 1")
    http_path = _http_probe_path(argv if shell is None else _shell_words(shell), target_port)
    if http_path is not None:
        return ComposeHealth(
            http_path=http_path, interval_s=interval, timeout_s=timeout, retries=retries
        ), False
    test_argv = tuple(argv) if shell is None else ("/bin/sh", "-c", shell)
    return ComposeHealth(test_argv=test_argv, interval_s=interval, timeout_s=timeout, retries=retries), False


def _shell_words(shell: str) -> list[str]:
    """The words of a CMD-SHELL test without its `|| exit 1` tail; [] when it is more than one command."""
    stripped = re.sub(r"\s*\|\|\s*exit\s+1\s*$", "", shell.strip())
    if any(token in stripped for token in ("|", "&", ";", "$(", "`", ">", "<")):
        return []
    try:
        return shlex.split(stripped)
    except ValueError:
        return []


def _http_probe_path(words: list[str], target_port: int | None) -> str | None:
    """`/PATH` when `words` only fetch http://localhost:<target_port>/PATH with curl or wget."""
    if not words or target_port is None:
        return None
    tool = os.path.basename(words[0])
    if tool not in ("curl", "wget"):
        return None
    urls: list[str] = []
    index = 1
    while index < len(words):
        word = words[index]
        if word.startswith(("http://", "https://")):
            urls.append(word)
        elif tool == "curl" and (
            _CURL_CLUSTER_RE.match(word)
            or word in ("--fail", "--silent", "--show-error", "--location", "--head")
        ):
            pass
        elif tool == "curl" and word in ("-o", "--output", "-m", "--max-time"):
            index += 1
        elif tool == "wget" and (
            _WGET_CLUSTER_RE.match(word) or word in ("--spider", "--quiet", "-O-", "-qO-")
        ):
            pass
        elif tool == "wget" and word in ("-O", "-qO", "-T"):
            index += 1
        elif tool == "wget" and word.startswith(("--timeout=", "--tries=", "-T")):
            pass
        else:
            return None  # a header, a method, credentials...: more than a GET; keep the command
        index += 1
    if len(urls) != 1:
        return None
    match = _LOCAL_URL_RE.match(urls[0])
    if match is None or urls[0].startswith("https://"):
        return None
    port = int(match.group(2)) if match.group(2) else 80
    if port != target_port:
        return None  # a port that is not the published one: the check can only run inside the container
    return match.group(3) or "/"


def _depends_on(path: Path, where: tuple[str | int, ...], depends: Any) -> list[str]:
    if depends is None:
        return []
    if isinstance(depends, list) and all(isinstance(item, str) for item in depends):
        return list(depends)
    if isinstance(depends, dict):
        for dependency, options in depends.items():
            condition = options.get("condition") if isinstance(options, dict) else None
            if condition not in (
                None,
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            ):
                raise ComposeError(
                    path,
                    (*where, str(dependency), "condition"),
                    f"{condition!r} is not service_started, service_healthy or service_completed_successfully",
                )
        return [str(dependency) for dependency in depends]
    raise ComposeError(
        path, where, "must be a list of service names or a mapping of name to {condition: ...}"
    )


def _environment(path: Path, where: tuple[str | int, ...], environment: Any) -> dict[str, str]:
    """Entries without a value (`- TOKEN`) are left out: compose passes them from its own environment,
    which is devmesh's, so the container gets them anyway."""
    if environment is None:
        return {}
    values: dict[str, str] = {}
    if isinstance(environment, dict):
        for key, value in environment.items():
            if value is not None:
                values[str(key)] = _scalar_text(value)
        return values
    if isinstance(environment, list):
        for index, entry in enumerate(environment):
            if not isinstance(entry, str):
                raise ComposeError(path, (*where, index), f"{entry!r} is not KEY=value")
            key, equals, value = entry.partition("=")
            if equals:
                values[key] = value
        return values
    raise ComposeError(path, where, "must be a list of KEY=value or a mapping")


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _restart(path: Path, where: tuple[str | int, ...], restart: Any) -> str | None:
    if restart is None:
        return None
    text = str(restart)
    mapped = {"no": "never", "always": "always", "unless-stopped": "always", "on-failure": "on-failure"}
    base = text.split(":")[0]  # on-failure:3
    if base not in mapped:
        raise ComposeError(path, where, f"{text!r} is not no, always, unless-stopped or on-failure")
    return mapped[base]


def parse_compose_duration(path: Path, key: tuple[str | int, ...], value: Any) -> float:
    """Seconds from a compose duration: "1m30s", "10s", "500ms", or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION_PART_RE.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ComposeError(path, key, f'{value!r} is not a duration such as "30s", "1m30s" or "500ms"')
    return sum(float(number) * _DURATION_FACTORS_S[unit] for number, unit in parts)


def _optional_duration(path: Path, key: tuple[str | int, ...], value: Any) -> float | None:
    return None if value is None else parse_compose_duration(path, key, value)


def _interpolate(
    value: Any, variables: Mapping[str, str], path: Path, key_path: tuple[str | int, ...], warnings: list[str]
) -> Any:
    if isinstance(value, dict):
        return {
            key: _interpolate(item, variables, path, (*key_path, str(key)), warnings)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(item, variables, path, (*key_path, index), warnings)
            for index, item in enumerate(value)
        ]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        current = variables.get(name)
        operator = match.group(2)
        argument = match.group(3) or ""
        if operator in ("-", ":-"):
            unset = current is None or (operator == ":-" and current == "")
            return argument if unset else str(current)
        if operator in ("?", ":?"):
            if current is None or (operator == ":?" and current == ""):
                raise ComposeError(
                    path,
                    key_path,
                    f"${{{name}}} is not set: {argument or 'it is required'} (export it or add it to .env)",
                )
            return current
        if operator in ("+", ":+"):
            present = current is not None and (operator == "+" or current != "")
            return argument if present else ""
        if current is None:
            warnings.append(f"{_key_text(key_path)}: ${name} is not set; using an empty string")
            return ""
        return current

    return _VAR_RE.sub(substitute, value)


def _key_text(key_path: Sequence[str | int]) -> str:
    text = ""
    for part in key_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
