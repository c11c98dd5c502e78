"""Hub revisions: a config fragment (`[services.*]`, `[faults.*]`, `[scenarios.*]`) pushed by the hub,
merged over the project's own config like the last overlay and validated with the same schema.

The hub checks only a revision's shape; the agent checks everything, because only the agent knows the
config the revision lands on (a fault may name a service of this project). What a revision may set is
bounded: routes, upstreams, faults and scenarios. It may not start a program on this machine, so the keys
that run something (`command`, `cwd`, `env`, `watch`, a `cmd` health check) are refused: those come only
from the project's own files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devmesh.config.errors import ConfigError, ConfigProblem
from devmesh.config.loader import LoadedConfig, load_config

__all__ = ["REVISION_SECTIONS", "check_document", "load_with_revision", "revision_hash"]

REVISION_SECTIONS = ("services", "faults", "scenarios")
# Keys of a service that would run a program here: never taken from the hub.
LOCAL_ONLY_SERVICE_KEYS = ("command", "cwd", "env", "watch")


def revision_hash(document: Mapping[str, Any]) -> str:
    """The hash the hub gives a revision: SHA-256 of its canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_document(document: object, *, source: Path) -> dict[str, Any]:
    """`document` as a revision, its shape checked (not its values: `load_with_revision` does that).

    Raises:
        ConfigError: naming `source` and the key path of every problem.
    """
    if not isinstance(document, dict):
        raise ConfigError.single(
            f"a revision is a table of {', '.join(REVISION_SECTIONS)}, not {type(document).__name__}",
            file=source,
        )
    problems: list[ConfigProblem] = []
    for section, tables in document.items():
        if section not in REVISION_SECTIONS:
            problems.append(
                ConfigProblem(
                    source,
                    None,
                    (str(section),),
                    "a revision may not set this section",
                    f"a revision sets only {', '.join(REVISION_SECTIONS)}; the rest stays in devmesh.toml",
                )
            )
            continue
        if not isinstance(tables, dict) or not all(isinstance(table, dict) for table in tables.values()):
            problems.append(
                ConfigProblem(source, None, (section,), f"expected tables such as [{section}.NAME]")
            )
            continue
        if section != "services":
            continue
        for name, table in tables.items():
            for key in LOCAL_ONLY_SERVICE_KEYS:
                if key in table:
                    problems.append(_local_only(source, (section, name, key)))
            health = table.get("health")
            if isinstance(health, dict) and "cmd" in health:
                problems.append(_local_only(source, (section, name, "health", "cmd")))
    if problems:
        raise ConfigError(problems)
    return document


def load_with_revision(
    path: Path, document: Mapping[str, Any] | None, *, source: Path, env_name: str | None = None
) -> LoadedConfig:
    """The config at `path` (with its overlays) and `document` merged over it, validated as one;
    problems in the revision name `source` (where the agent keeps it). None: the files alone.

    Raises:
        ConfigError: the files or the revision are not valid; the error text names the key and why.
    """
    if document is None:
        return load_config(path, env_name=env_name)
    checked = check_document(document, source=source)
    return load_config(path, env_name=env_name, revision=(source, checked))


def _local_only(source: Path, key_path: tuple[str, ...]) -> ConfigProblem:
    return ConfigProblem(
        source,
        None,
        key_path,
        "a revision may not run programs on this machine",
        "set it in the project's devmesh.toml; a revision sets ports, remotes, hosts, routes, requires, lb",
    )
