"""Real installed distributions for plugin tests: a package and its `NAME-VERSION.dist-info` folder
(METADATA and entry_points.txt) in a folder that goes on sys.path or PYTHONPATH, as pip would leave it."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(
    site: Path,
    name: str,
    *,
    modules: dict[str, str],
    entry_points: dict[str, str],
    version: str = "0.1",
) -> Path:
    """Write `modules` (module name -> source) and a dist-info declaring `entry_points` (entry point
    name -> "module:attribute") in the group devmesh.plugins. Returns `site`."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "".join(f"{entry} = {target}\n" for entry, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[devmesh.plugins]\n{lines}", encoding="utf-8")
    return site
