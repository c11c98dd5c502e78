"""Plugins: commands and hooks other packages add to devmesh, and `devmesh-NAME` programs on PATH.

Three kinds, all found by name, none imported before it is needed (`devmesh --help` stays fast):

- **command**: a Python entry point in the group `devmesh.plugins` whose object is a `click.Command`
  (or `click.Group`) becomes `devmesh NAME`, NAME being the entry point's name.
- **hooks**: an entry point in the same group whose object is a module (or any object, or a class,
  instantiated once without arguments) with one or more of the functions in `HOOK_NAMES`. The agent calls
  them off its event loop (`devmesh.plugins.hooks`).
- **executable**: a program named `devmesh-NAME` on PATH runs as `devmesh NAME ARGS...`, as git runs
  `git-NAME`, with the project's whereabouts in its environment (`devmesh.plugins.executables`).

A built-in command always wins over a plugin of the same name; a Python plugin wins over a program on
PATH. `devmesh plugin list` shows every plugin found, and the ones shadowed or broken.
"""

from __future__ import annotations

ENTRY_POINT_GROUP = "devmesh.plugins"
EXECUTABLE_PREFIX = "devmesh-"
HOOK_NAMES = ("on_agent_started", "on_event", "on_agent_stopping")

__all__ = ["ENTRY_POINT_GROUP", "EXECUTABLE_PREFIX", "HOOK_NAMES"]
