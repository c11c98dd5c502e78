"""Writing to the user's devmesh.toml: adding services and setting tables, never losing a byte of theirs.

Every command that changes the config goes through here (`from-docker --write`, `compose import --write`,
`k8s sync`, ...). Three promises:

- The user's text stays as it is. New `[services.NAME]` tables are appended after the last byte of the
  file, so the original text is a prefix of the result; `set_table` edits one table through tomlkit, which
  keeps comments, order and spacing everywhere else.
- A write is atomic: a temporary file in the same folder, fsync, `os.replace`, the file's mode kept.
  A crash at any point leaves either the old file or the new one, never half of one. A temporary file
  left by a killed writer names its pid and is removed by the next write once that pid is gone.
- The result loads: the new text is validated with `load_config` (overlays, `.env` and all) before it
  replaces the old one. If it would not load, nothing is written and the error says why.

YAML configs are not rewritten (comments and layout would not survive a round trip): `WritebackError` says
so, and the caller prints the TOML for the user to paste (`services_toml`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import InlineTable, Table

__all__ = [
    "MergeResult",
    "WritebackError",
    "atomic_write_text",
    "merge_services",
    "services_toml",
    "set_table",
]

_TEMP_SUFFIX = ".tmp"
_NEW_FILE_MODE = 0o666


class WritebackError(ValueError):
    """The config cannot be written back: a YAML config, a file that does not parse, or a result that
    would not load. The message names the file and says what to do instead."""


@dataclass(frozen=True)
class MergeResult:
    """What `merge_services` did: the names added, and each name skipped with the reason."""

    added: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def atomic_write_text(path: Path, text: str, *, validate: Callable[[Path], None] | None = None) -> None:
    """Replace `path` with `text` atomically, keeping its mode (and owner, where permitted).

    The text goes to a temporary file in the same folder, is fsynced, optionally checked by
    `validate(temp_path)` (which raises to refuse the write), then renamed over `path`. Symbolic links
    are followed: the file they point to is replaced, the link stays.
    """
    target = Path(os.path.realpath(path))
    folder = target.parent
    _remove_stale_temporaries(folder, target.name)
    try:
        current = target.stat()
    except FileNotFoundError:
        current = None
    # The temporary keeps the target's extension: `load_config` reads a file as TOML or YAML by it.
    temporary = folder / (f".{target.stem}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}{target.suffix}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            if current is not None:
                os.fchmod(handle.fileno(), current.st_mode & 0o7777)
                with contextlib.suppress(PermissionError):
                    os.fchown(handle.fileno(), current.st_uid, current.st_gid)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(handle.fileno(), _NEW_FILE_MODE & ~umask)
            os.fsync(handle.fileno())
        if validate is not None:
            validate(temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(folder)


def merge_services(path: Path, services: Mapping[str, Mapping[str, Any]], *, comment: str) -> MergeResult:
    """Append a `[services.NAME]` table, under a `# comment` line, for each service not already there.

    A name already in the file is skipped, and so is a service whose port an existing (or just added)
    service already has; `MergeResult.skipped` says why. A missing file is created. Nothing is written
    when nothing is added.

    Raises:
        WritebackError: a YAML config, a file that is not valid TOML, or a result that would not load.
    """
    path = Path(path)
    _refuse_yaml(path, what="services")
    original = _read_text(path)
    document = _parse(path, original)
    existing = document.get("services")
    existing_services: dict[str, Any] = dict(existing) if isinstance(existing, dict) else {}
    taken_ports: dict[int, str] = {}
    for name, spec in existing_services.items():
        port = _port_of(spec)
        if port is not None:
            taken_ports.setdefault(port, name)

    result = MergeResult()
    chosen: dict[str, Mapping[str, Any]] = {}
    for name, spec in services.items():
        if name in existing_services:
            result.skipped[name] = f"a service named {name!r} is already in {path.name}"
            continue
        port = _port_of(spec)
        if port is not None and port in taken_ports:
            owner = taken_ports[port]
            where = "being added too" if owner in chosen else f"in {path.name}"
            result.skipped[name] = f"port {port} is already used by service {owner!r} ({where})"
            continue
        if port is not None:
            taken_ports[port] = name
        chosen[name] = spec
        result.added.append(name)
    if not chosen:
        return result

    addition = services_toml(chosen, comment=comment)
    if not original or original.endswith("\n\n"):
        separator = ""
    elif original.endswith("\n"):
        separator = "\n"  # a blank line between the user's last line and the added tables
    else:
        separator = "\n\n"
    merged = original + separator + addition
    if not _parses(merged):
        # `services = { ... }` as an inline table, or `[services]` written in a way a header cannot extend:
        # edit the document instead. Only that one table changes.
        merged = _merged_through_document(path, original, chosen)
    atomic_write_text(path, merged, validate=_validator(path))
    return result


def set_table(path: Path, keys: Sequence[str], values: Mapping[str, Any]) -> bool:
    """Set each key of `values` in the table at `keys` (created when missing); True if the file changed.

    Keys of the table that `values` does not name are left alone; a value of None removes its key. A
    table created here is an inline table inside its parent (`kubernetes = { context = "..." }`), or a
    `[section]` at the end of the file for a top-level key.

    Raises:
        WritebackError: a YAML config, a file that is not valid TOML, a key that holds something other
            than a table, or a result that would not load.
    """
    path = Path(path)
    if not keys:
        raise WritebackError("set_table needs at least one key (the table to set, e.g. ('discovery',))")
    _refuse_yaml(path, what="[" + ".".join(keys) + "]")
    original = _read_text(path)
    document = _parse(path, original)
    container: Any = document
    for depth, key in enumerate(keys):
        child = container.get(key)
        if child is None:
            child = tomlkit.table() if depth == 0 else tomlkit.inline_table()
            container[key] = child
            child = container[key]
        elif not isinstance(child, Table | InlineTable | Container | dict):
            dotted = ".".join(keys[: depth + 1])
            raise WritebackError(
                f"{path}: {dotted} holds a {type(child).__name__.lower()}, not a table; "
                f"fix it by hand before devmesh can set {'.'.join(keys)}"
            )
        container = child
    changed = False
    for key, value in values.items():
        if value is None:
            if key in container:
                del container[key]
                changed = True
            continue
        current = container.get(key)
        plain_current = current.unwrap() if hasattr(current, "unwrap") else current
        if key in container and plain_current == _plain(value):
            continue
        container[key] = _toml_value(value)
        changed = True
    if not changed:
        return False
    atomic_write_text(path, tomlkit.dumps(document), validate=_validator(path))
    return True


def services_toml(services: Mapping[str, Mapping[str, Any]], *, comment: str) -> str:
    """The `[services.NAME]` tables for `services`, each under a `# comment` line: what `merge_services`
    appends, and what a command prints for the user to paste into a config it cannot write."""
    blocks: list[str] = []
    for name, spec in services.items():
        document = tomlkit.document()
        table = tomlkit.table()
        for key, value in spec.items():
            if value is None:
                continue
            table.add(key, _toml_value(value))
        super_table = tomlkit.table(is_super_table=True)
        super_table.add(name, table)
        document.add("services", super_table)
        comment_lines = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines() or [""])
        blocks.append(comment_lines + tomlkit.dumps(document).lstrip("\n"))
    return "\n".join(block if block.endswith("\n") else block + "\n" for block in blocks)


def _toml_value(value: Any) -> Any:
    """Nested mappings become inline tables (`health = { http = "/" }`): one line per key, as users write."""
    if isinstance(value, Mapping):
        inline = tomlkit.inline_table()
        for key, item in value.items():
            if item is not None:
                inline[key] = _toml_value(item)
        return inline
    if isinstance(value, tuple):
        return [_toml_value(item) for item in value]
    if isinstance(value, list):
        return [_toml_value(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _port_of(spec: Any) -> int | None:
    port = spec.get("port") if isinstance(spec, Mapping) else None
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str) and port.strip().isdigit():
        return int(port.strip())
    return None


def _refuse_yaml(path: Path, *, what: str) -> None:
    if path.suffix.lower() in (".yaml", ".yml"):
        raise WritebackError(
            f"{path} is a YAML config, and write-back supports devmesh.toml only (a YAML round trip would "
            f"lose your comments and layout): add the {what} printed below to {path.name} by hand"
        )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except OSError as error:
        raise WritebackError(f"{path}: cannot read the config: {error.strerror}") from None


def _parse(path: Path, text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as error:
        raise WritebackError(
            f"{path} is not valid TOML ({error}); fix it first, devmesh does not write to a file it cannot read"
        ) from None


def _parses(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


def _merged_through_document(path: Path, original: str, chosen: Mapping[str, Mapping[str, Any]]) -> str:
    document = _parse(path, original)
    services = document.get("services")
    if not isinstance(services, Table | InlineTable):
        raise WritebackError(
            f"{path}: `services` is not a table; fix it by hand before devmesh can add services to it"
        )
    for name, spec in chosen.items():
        services[name] = _toml_value(spec)
    return tomlkit.dumps(document)


def _validator(path: Path) -> Callable[[Path], None]:
    """Check that the new text loads as the config at `path` would (its overlays and `.env` included)."""

    def validate(candidate: Path) -> None:
        from devmesh.config.errors import ConfigError
        from devmesh.config.loader import load_config

        try:
            load_config(candidate)
        except ConfigError as error:
            problems = str(error).replace(str(candidate), str(path))
            raise WritebackError(
                f"{path} was not changed: with the change it would not load:\n{problems}"
            ) from None

    return validate


def _remove_stale_temporaries(folder: Path, name: str) -> None:
    """Remove temporaries a killed writer left for `name`: those whose writer's pid no longer runs."""
    stem = Path(name).stem
    pattern = re.compile(
        rf"^\.{re.escape(stem)}\.(\d+)\.[0-9a-f]{{8}}{re.escape(_TEMP_SUFFIX)}{re.escape(Path(name).suffix)}$"
    )
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); some systems cannot open a folder, which is fine."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
