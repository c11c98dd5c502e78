"""What `devmesh install` and `devmesh uninstall` change, computed first and applied second.

Both commands compute the whole wanted state for one mesh (its hosts-file block, its DNS snippets) and
compare it with what is on disk. The result is a list of `Change`s, each with the exact bytes before
and after, so that `--dry-run` can print the real diff, a refusal can name every file, and applying
writes nothing that was not shown. Running the same command twice gives no changes the second time.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from devmesh.names import files, hostsfile, resolver
from devmesh.names.plan import NameSet

HOSTS_FILE_ENV = "DEVMESH_HOSTS_FILE"
Method = Literal["auto", "hosts", "dns"]


class NamesError(Exception):
    """Something the user has to fix before devmesh can change names (the message says what)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One file, before and after. `None` means the file does not exist (before) or goes (after)."""

    path: Path
    before: bytes | None
    after: bytes | None
    purpose: str
    then: str = ""  # the command that makes the change take effect, when one is needed
    keep_backup: bool = False  # the hosts file: the user's file, so its previous content is kept
    make_folder: bool = False  # a DNS folder that may not exist yet (never the hosts file's)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def verb(self) -> str:
        if not self.changed:
            return "up to date"
        if self.before is None:
            return "create"
        return "delete" if self.after is None else "update"

    def diff(self) -> str:
        """A unified diff of the change ("" when there is none)."""
        before = hostsfile.decode(self.before).splitlines(keepends=True) if self.before is not None else []
        after = hostsfile.decode(self.after).splitlines(keepends=True) if self.after is not None else []
        lines = difflib.unified_diff(
            before,
            after,
            fromfile=str(self.path) if self.before is not None else "/dev/null",
            tofile=str(self.path) if self.after is not None else "/dev/null",
        )
        return "".join(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
        )


@dataclass(slots=True)
class NamesPlan:
    """The changes for one command, and what the user should know about them."""

    changes: list[Change]
    notes: list[str] = field(default_factory=list)
    unresolved: str = ""  # names this machine will still not resolve after applying, and why

    @property
    def pending(self) -> list[Change]:
        return [change for change in self.changes if change.changed]


def hosts_file_path(platform: str, env: Mapping[str, str] | None = None) -> Path:
    """The hosts file: $DEVMESH_HOSTS_FILE, else the system's."""
    env = os.environ if env is None else env
    override = env.get(HOSTS_FILE_ENV)
    if override:
        return Path(override)
    if platform == "win32":
        return Path(env.get("SystemRoot", r"C:\Windows")) / "System32" / "drivers" / "etc" / "hosts"
    return Path("/etc/hosts")


def real_path(path: Path) -> Path:
    """The file a symlinked hosts file points to: renaming over the link would replace the link itself
    with a file (and on NixOS, for one, cut /etc/hosts off from the system's configuration)."""
    return path.resolve() if path.is_symlink() else path


def plan_install(
    names: NameSet,
    *,
    method: Method = "auto",
    hosts_path: Path,
    platform: str,
    env: Mapping[str, str] | None = None,
) -> NamesPlan:
    """The changes that make `names` resolve here with `method` (and undo what another method did)."""
    hosts_path = real_path(hosts_path)
    use_dns = method == "dns" or (method == "auto" and bool(names.wildcards))
    use_hosts = method in ("auto", "hosts")
    plan = NamesPlan([])
    before = _read(hosts_path)
    text = hostsfile.decode(before) if before is not None else ""
    try:
        wanted = (
            hostsfile.with_block(text, names, where=str(hosts_path))
            if use_hosts
            else hostsfile.without_blocks(text, names.mesh, where=str(hosts_path))
        )
    except hostsfile.HostsFileError as error:
        raise NamesError(str(error)) from None
    after = hostsfile.encode(wanted) if before is not None or wanted else None
    purpose = f"hosts file: {len(names.plain)} name(s) of mesh {names.mesh!r}" if use_hosts else "hosts file"
    plan.changes.append(Change(hosts_path, before, after, purpose, keep_backup=True))

    wanted_files: list[resolver.ManagedFile] = []
    if use_dns:
        dns = resolver.resolver_plan(names, platform=platform, env=env)
        wanted_files = list(dns.files)
        if dns.missing:
            covered = "the plain names are in the hosts file; " if use_hosts else ""
            plan.unresolved = f"{', '.join(names.wildcards) or names.domain}: {covered}{dns.missing}"
    elif names.wildcards:
        plan.unresolved = (
            f"{', '.join(names.wildcards)}: a hosts file cannot hold wildcards; "
            "use --auto (a dnsmasq snippet) or list the names in `hosts`"
        )
    for managed in wanted_files:
        current = _read(managed.path)
        if current is not None and not _owned_by(current, names.mesh):
            raise NamesError(
                f"{managed.path} exists and devmesh did not write it (its first line is not "
                f"{resolver.owner_line(names.mesh)!r}); move it away or merge by hand:\n{managed.text}"
            )
        plan.changes.append(
            Change(
                managed.path,
                current,
                managed.text.encode(),
                managed.purpose,
                then=managed.then,
                make_folder=managed.make_folder,
            )
        )
    wanted_paths = {managed.path for managed in wanted_files}
    for stale in resolver.owned_files(names.mesh, platform=platform, env=env):
        if stale not in wanted_paths:
            plan.changes.append(_deletion(stale, "no longer needed"))
    return plan


def plan_uninstall(
    mesh: str | None, *, hosts_path: Path, platform: str, env: Mapping[str, str] | None = None
) -> NamesPlan:
    """The changes that take out what devmesh added for `mesh` (for every mesh when None)."""
    plan = NamesPlan([])
    hosts_path = real_path(hosts_path)
    before = _read(hosts_path)
    if before is not None:
        try:
            text = hostsfile.without_blocks(hostsfile.decode(before), mesh, where=str(hosts_path))
        except hostsfile.HostsFileError as error:
            raise NamesError(str(error)) from None
        plan.changes.append(
            Change(hosts_path, before, hostsfile.encode(text), "hosts file", keep_backup=True)
        )
    for owned in resolver.owned_files(mesh, platform=platform, env=env):
        plan.changes.append(_deletion(owned, "devmesh DNS snippet"))
    return plan


def write_problems(plan: NamesPlan) -> list[files.WriteProblem]:
    """Why the pending changes cannot be written by this user (empty when they can)."""
    problems = []
    for change in plan.pending:
        folder = change.path.parent
        if change.make_folder and not folder.exists() and folder.parent.is_dir():
            # apply() makes it (macOS has no /etc/resolver until something needs it).
            problem = files.write_problem(folder)
        else:
            problem = files.write_problem(change.path)
        if problem is not None:
            problems.append(problem)
    return problems


@dataclass(frozen=True, slots=True)
class Applied:
    change: Change
    how: str  # "replaced", "rewritten in place", "created", "deleted"
    backup: Path | None


def apply(plan: NamesPlan, *, replace: files.Replace = os.replace) -> list[Applied]:
    """Write the pending changes, each file backed up first when it is the user's.

    Raises NamesError when a file changed since the plan was made (someone edited it meanwhile):
    nothing more is written then, and running the command again makes a fresh plan.
    """
    done = []
    for change in plan.pending:
        if _read(change.path) != change.before:
            raise NamesError(f"{change.path} changed while devmesh was waiting; run the command again")
        backup = None
        if change.keep_backup and change.before is not None:
            backup = files.write_backup(change.path, change.before)
        if change.after is None:
            files.remove_file(change.path)
            done.append(Applied(change, "deleted", backup))
            continue
        if change.make_folder:
            change.path.parent.mkdir(exist_ok=True)
        how = files.write_file(change.path, change.after, replace=replace)
        done.append(Applied(change, "created" if change.before is None else how, backup))
    return done


def _deletion(path: Path, purpose: str) -> Change:
    return Change(path, _read(path), None, purpose)


def _owned_by(content: bytes, mesh: str) -> bool:
    first = hostsfile.decode(content).split("\n", 1)[0]
    return first == resolver.owner_line(mesh)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise NamesError(f"{path} is a folder, not a file; point {HOSTS_FILE_ENV} at a file") from None
    except PermissionError:
        raise NamesError(f"{path} is not readable by this user; run the command with sudo") from None
