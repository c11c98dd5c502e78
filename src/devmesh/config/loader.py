"""Finding, reading, expanding, merging and validating `devmesh.toml` and its overlays (DESIGN §2).

Order of the layers, each merged over the one before: the main file, `devmesh.<env>.<ext>` when an
environment is chosen, then `devmesh.local.<ext>`. `${VAR}` and `${VAR:-default}` expand from the process
environment first and from `.env` beside the config second, as docker compose does.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from devmesh import const
from devmesh.config.errors import ConfigError, ConfigProblem
from devmesh.config.finder import find_config
from devmesh.config.locate import KeyLines, find_line, toml_key_lines, yaml_key_lines
from devmesh.config.schema import KeyedError, MeshConfig

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}|\$\$")
_DOTENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from."""

    config: MeshConfig
    path: Path
    files: tuple[Path, ...]
    env_name: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def project_dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        return self.project_dir / const.STATE_DIR_NAME

    @property
    def mesh_name(self) -> str:
        return self.config.mesh.name or self.project_dir.name


@dataclass
class _Layer:
    path: Path
    data: dict[str, Any]
    lines: KeyLines = field(default_factory=dict)


def load_config(
    path: Path | None = None,
    *,
    env_name: str | None = None,
    environ: dict[str, str] | None = None,
    revision: tuple[Path, Mapping[str, Any]] | None = None,
) -> LoadedConfig:
    """Read, expand, merge and validate the config at `path` (found from the cwd when None).

    `revision` (a hub revision: where it is kept, and its document) is merged over every file as the last
    overlay; it is not expanded (its text comes from the hub, not from this machine), and a problem in a
    key it sets names its file.

    Raises:
        ConfigError: naming the file, key path and line of every problem found.
    """
    main_path = path.resolve() if path is not None else find_config()
    environ = dict(os.environ) if environ is None else environ
    env_name = env_name if env_name is not None else (environ.get("DEVMESH_ENV") or None)
    variables = {**_read_dotenv(main_path.parent / ".env"), **environ}
    warnings: list[str] = []

    layers = [_read_layer(main_path)]
    for overlay in _overlay_paths(main_path, env_name):
        layers.append(_read_layer(overlay))
    for layer in layers:
        layer.data = _expand(layer.data, variables, layer, (), warnings)
    revision_layer = _Layer(revision[0], dict(revision[1])) if revision is not None else None
    if revision_layer is not None:
        layers.append(revision_layer)

    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
    try:
        config = MeshConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_problems_from(error, layers, revision_layer)) from None
    return LoadedConfig(
        config=config,
        path=main_path,
        files=tuple(layer.path for layer in layers),
        env_name=env_name,
        warnings=tuple(warnings),
    )


def _overlay_paths(main_path: Path, env_name: str | None) -> list[Path]:
    folder = main_path.parent
    found: list[Path] = []
    if env_name:
        candidates = [folder / f"devmesh.{env_name}{ext}" for ext in (".toml", ".yaml", ".yml")]
        existing = [candidate for candidate in candidates if candidate.is_file()]
        if not existing:
            raise ConfigError.single(
                f"environment {env_name!r} has no overlay file",
                file=main_path,
                hint=f"create {candidates[0].name} beside {main_path.name}, or drop --env / DEVMESH_ENV",
            )
        found.append(existing[0])
    for ext in (".toml", ".yaml", ".yml"):
        local = folder / f"devmesh.local{ext}"
        if local.is_file():
            found.append(local)
            break
    return found


def _read_layer(path: Path) -> _Layer:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError.single(f"cannot read the config: {error.strerror}", file=path) from None
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            line_match = re.search(r"at line (\d+)", str(error))
            raise ConfigError.single(
                f"not valid TOML: {re.sub(r' [(]at line .*$', '', str(error))}",
                file=path,
                line=int(line_match.group(1)) if line_match else None,
            ) from None
        return _Layer(path, data, toml_key_lines(text))
    import yaml  # only YAML configs pay for it

    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        raise ConfigError.single(
            f"not valid YAML: {error.problem}", file=path, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError.single(f"not valid YAML: {error}", file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError.single(
            "the top level must be a mapping of sections ([mesh], [services.x], ...)", file=path
        )
    return _Layer(path, data, yaml_key_lines(text))


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = _DOTENV_LINE_RE.match(raw)
        if match is None:
            continue
        value = match.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[match.group(1)] = value
    return values


def _expand(
    value: Any, variables: dict[str, str], layer: _Layer, key_path: tuple[str, ...], warnings: list[str]
) -> Any:
    if isinstance(value, dict):
        return {
            key: _expand(item, variables, layer, (*key_path, str(key)), warnings)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_expand(item, variables, layer, key_path, warnings) for item in value]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        current = variables.get(name)
        if match.group(2) is not None:  # ${VAR-default} or ${VAR:-default}
            empty_counts_as_unset = match.group(2) == ":-"
            if current is None or (empty_counts_as_unset and current == ""):
                return match.group(3)
            return current
        if match.group(4) is not None:  # ${VAR?message} or ${VAR:?message}
            if current is None or (match.group(4) == ":?" and current == ""):
                raise ConfigError.single(
                    f"${{{name}}} is not set: {match.group(5) or 'it is required'}",
                    file=layer.path,
                    line=find_line(layer.lines, key_path),
                    key_path=key_path,
                    hint=f"export {name}=... or add it to .env beside the config",
                )
            return current
        if current is None:
            warnings.append(
                f"{layer.path.name}: {'.'.join(key_path)}: ${{{name}}} is not set; using an empty string"
            )
            return ""
        return current

    # Commands keep `$PORT`-style references for the shell; only the ${...} forms expand here.
    return _VAR_RE.sub(substitute, value)


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _problems_from(
    error: ValidationError, layers: list[_Layer], revision: _Layer | None = None
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for detail in error.errors(include_url=False):
        key_path = tuple(str(part) for part in detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        hint: str | None = None
        original = (detail.get("ctx") or {}).get("error")
        if isinstance(original, KeyedError):
            key_path = original.key_path
            message = original.message
            if original.wrong is not None:
                hint = _suggest(original.wrong, original.candidates)
        elif detail["type"] == "extra_forbidden":
            message = "unknown key"
            hint = _suggest(key_path[-1], _valid_keys(key_path[:-1]))
        elif detail["type"] == "missing":
            message = "required key is missing"
        elif detail["type"] in {"model_type", "dict_type"}:
            message = "expected a table (a [section] or { key = value })"
        # The last layer that writes the key is the one to fix.
        file_path, line = layers[0].path, None
        in_revision = revision is not None and _data_has(revision.data, key_path)
        if revision is not None and in_revision:
            file_path = revision.path  # a hub document has no lines
        for layer in [] if in_revision else reversed(layers):
            line = find_line(layer.lines, key_path)
            if line is not None and _layer_has(layer.data, key_path[:1]):
                file_path = layer.path
                break
        problems.append(ConfigProblem(file_path, line, key_path, message, hint))
    return problems


def _layer_has(data: dict[str, Any], key_path: tuple[str, ...]) -> bool:
    return not key_path or key_path[0] in data


def _data_has(data: dict[str, Any], key_path: tuple[str, ...]) -> bool:
    """Whether `data` sets the key at `key_path`."""
    node: Any = data
    for part in key_path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _suggest(wrong: str, candidates: set[str] | list[str]) -> str | None:
    close = difflib.get_close_matches(wrong, sorted(candidates), n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    if candidates:
        return "valid keys: " + ", ".join(sorted(candidates))
    return None


def _valid_keys(key_path: tuple[str, ...]) -> list[str]:
    """The keys allowed at `key_path`, found by walking the schema's models."""
    model: type[BaseModel] = MeshConfig
    index = 0
    while index < len(key_path):
        info = model.model_fields.get(key_path[index])
        if info is None:
            return []
        annotation = info.annotation
        dict_model = _dict_value_model(annotation)
        if dict_model is not None:
            next_model: type[BaseModel] | None = dict_model
            index += 1  # skip the user's name (a service, fault or scenario)
        else:
            next_model = _model_in(annotation)
        if next_model is None:
            return []
        model = next_model
        index += 1
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _dict_value_model(annotation: Any) -> type[BaseModel] | None:
    if getattr(annotation, "__origin__", None) is dict:
        return _model_in(annotation.__args__[1])
    return None
