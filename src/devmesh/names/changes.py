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
    manual: list[str] = field(default_factory=list)  # steps left to the user (system DNS: not devmesh's)

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
    """The changes that make `names` resolve here with `method` (and undo what another method did).

    Raises NamesError, before anything is planned, when `method` is "dns" and the DNS method cannot be
    used here, and when a block or file of the same mesh name belongs to another project (see
    `_another_project`).
    """
    hosts_path = real_path(hosts_path)
    use_dns = method == "dns" or (method == "auto" and bool(names.wildcards))
    use_hosts = method in ("auto", "hosts")
    dns = resolver.resolver_plan(names, platform=platform, env=env) if use_dns else None
    if method == "dns" and dns is not None and dns.missing:
        raise NamesError(
            f"--method dns cannot be used here: {dns.missing}. Nothing was changed (the hosts file "
            "keeps any block it has); --auto or --method hosts puts the plain names in the hosts file"
        )
    plan = NamesPlan([])
    before = _read(hosts_path)
    text = hostsfile.decode(before) if before is not None else ""
    try:
        if use_hosts:
            _refuse_another_projects_block(text, names, hosts_path)
            wanted = hostsfile.with_block(text, names, where=str(hosts_path))
        else:
            wanted = hostsfile.without_blocks(
                text,
                names.mesh,
                where=str(hosts_path),
                keep=lambda block: _another_project(block.project, names.project),
            )
    except hostsfile.HostsFileError as error:
        raise NamesError(_with_backup_hint(str(error), hosts_path)) from None
    after = hostsfile.encode(wanted) if before is not None or wanted else None
    purpose = f"hosts file: {len(names.plain)} name(s) of mesh {names.mesh!r}" if use_hosts else "hosts file"
    plan.changes.append(Change(hosts_path, before, after, purpose, keep_backup=True))

    wanted_files: list[resolver.ManagedFile] = []
    if dns is not None:
        wanted_files = list(dns.files)
        plan.manual.extend(dns.manual)
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
        wanted_bytes = managed.text.encode()
        if current is not None:
            _refuse_foreign_file(managed, current, names)
            if _same_but_project(current, wanted_bytes):
                wanted_bytes = current  # another project, the same content: see hostsfile.with_block
        plan.changes.append(
            Change(
                managed.path,
                current,
                wanted_bytes,
                managed.purpose,
                then=managed.then,
                make_folder=managed.make_folder,
            )
        )
    wanted_paths = {managed.path for managed in wanted_files}
    for stale in resolver.owned_files(names.mesh, platform=platform, env=env):
        if stale in wanted_paths:
            continue
        current = _read(stale)
        if current is not None and _another_project(_project_of(current), names.project):
            plan.notes.append(f"kept {stale}: devmesh wrote it for the project in {_project_of(current)}")
            continue
        plan.changes.append(_deletion(stale, "no longer needed", platform=platform, env=env))
    return plan


def plan_uninstall(
    mesh: str | None,
    *,
    hosts_path: Path,
    platform: str,
    env: Mapping[str, str] | None = None,
    project: str = "",
) -> NamesPlan:
    """The changes that take out what devmesh added for `mesh` (for every mesh when None).

    With `project` (uninstall run in a project), a block or file of that mesh name that records another
    project folder, one that still exists, stays: it is that project's, not this one's.
    """
    plan = NamesPlan([])
    hosts_path = real_path(hosts_path)
    before = _read(hosts_path)
    if before is not None:
        try:
            decoded = hostsfile.decode(before)
            kept = [
                block
                for block in hostsfile.find_blocks(decoded, where=str(hosts_path))
                if (mesh is None or block.mesh == mesh) and _another_project(block.project, project)
            ]
            text = hostsfile.without_blocks(
                decoded, mesh, where=str(hosts_path), keep=lambda block: block in kept
            )
        except hostsfile.HostsFileError as error:
            raise NamesError(_with_backup_hint(str(error), hosts_path)) from None
        plan.notes.extend(
            f"kept the hosts-file block of mesh {block.mesh!r}: it is the project's in {block.project}"
            for block in kept
        )
        plan.changes.append(
            Change(hosts_path, before, hostsfile.encode(text), "hosts file", keep_backup=True)
        )
    env = os.environ if env is None else env
    deleted: list[Path] = []
    for owned in resolver.owned_files(mesh, platform=platform, env=env):
        current = _read(owned)
        if current is not None and _another_project(_project_of(current), project):
            plan.notes.append(f"kept {owned}: devmesh wrote it for the project in {_project_of(current)}")
            continue
        deleted.append(owned)
        plan.changes.append(_deletion(owned, "devmesh DNS snippet", platform=platform, env=env))
    snippets = resolver.dnsmasq_dir(platform, env)
    resolved_here = platform != "darwin" and resolver.resolved_dir(env) is not None
    if resolved_here and snippets is not None and any(path.parent == snippets for path in deleted):
        remaining = resolver.snippet_domains(snippets, skip=deleted)
        plan.manual.extend(resolver.resolved_undo_steps(remaining))
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
            problem = files.write_problem(change.path, deleting=change.after is None)
        if problem is not None:
            problems.append(problem)
    return problems


@dataclass(frozen=True, slots=True)
class Applied:
    change: Change
    how: str  # "replaced", "rewritten in place", "created", "deleted"
    backup: Path | None


class ApplyError(NamesError):
    """Applying stopped at `failed`: `done` were applied before it, `not_attempted` come after it."""

    def __init__(self, message: str, *, done: list[Applied], failed: Change, not_attempted: list[Change]):
        super().__init__(message)
        self.done = done
        self.failed = failed
        self.not_attempted = not_attempted


def apply(plan: NamesPlan, *, replace: files.Replace = os.replace) -> list[Applied]:
    """Write the pending changes, each file backed up first when it is the user's.

    Stops at the first change that cannot be made and raises ApplyError, whose message says what
    happened to that file, which changes were already applied and which were not attempted. A file
    that changed since the plan was made (someone edited it meanwhile) is such a change: running the
    command again makes a fresh plan.
    """
    done: list[Applied] = []
    pending = plan.pending
    for index, change in enumerate(pending):
        backup = None
        try:
            if _read(change.path) != change.before:
                raise NamesError(f"{change.path} changed while devmesh was waiting; run the command again")
            if change.keep_backup and change.before is not None:
                backup = files.write_backup(change.path, change.before)
            if change.after is None:
                files.remove_file(change.path)
                done.append(Applied(change, "deleted", backup))
                continue
            if change.make_folder:
                change.path.parent.mkdir(exist_ok=True)
            how = files.write_file(change.path, change.after, replace=replace)
        except (OSError, NamesError) as error:
            raise ApplyError(
                _failure_message(change, error, backup, done, pending[index + 1 :]),
                done=done,
                failed=change,
                not_attempted=pending[index + 1 :],
            ) from error
        done.append(Applied(change, "created" if change.before is None else how, backup))
    return done


def describe(applied: Applied) -> str:
    """One applied change, as the commands print it."""
    backup = f" (previous content: {applied.backup})" if applied.backup else ""
    return f"{applied.how} {applied.change.path}{backup}"


def _failure_message(
    change: Change,
    error: OSError | NamesError,
    backup: Path | None,
    done: list[Applied],
    not_attempted: list[Change],
) -> str:
    if isinstance(error, NamesError):
        lines = [str(error)]
    else:
        verb = "delete" if change.after is None else "write"
        where = f" ({error.filename})" if error.filename and str(error.filename) != str(change.path) else ""
        lines = [f"cannot {verb} {change.path}{where}: {error.strerror or error}"]
        if isinstance(error, files.InPlaceWriteError) and backup is not None:
            lines.append(
                f"it was being rewritten in place and may be half-written: its previous content is in "
                f"{backup} (put it back: cp {backup} {change.path})"
            )
        elif isinstance(error, files.InPlaceWriteError):
            lines.append("it was being rewritten in place and may be half-written")
        else:
            lines.append(f"{change.path} is unchanged")
    if done:
        lines.append("already applied: " + "; ".join(describe(applied) for applied in done))
    else:
        lines.append("no other file had been changed")
    if not_attempted:
        lines.append("not attempted: " + "; ".join(f"{c.verb} {c.path}" for c in not_attempted))
    return "\n".join(lines)


def _deletion(path: Path, purpose: str, *, platform: str, env: Mapping[str, str] | None = None) -> Change:
    return Change(
        path, _read(path), None, purpose, then=resolver.takes_effect(path, platform=platform, env=env)
    )


def _another_project(recorded: str, ours: str) -> bool:
    """True when `recorded` (a block's or file's project folder) is another project than `ours` and that
    project is still there. Unknown on either side is not another project; nor is a folder that no
    longer exists (the project moved or was deleted): its entries are taken over."""
    return bool(recorded and ours and recorded != ours and Path(recorded).is_dir())


def _refuse_another_projects_block(text: str, names: NameSet, hosts_path: Path) -> None:
    for block in hostsfile.find_blocks(text, where=str(hosts_path)):
        if block.mesh != names.mesh or not _another_project(block.project, names.project):
            continue
        if block.body == tuple(hostsfile.body_lines(names)):
            continue  # the same names: nothing to take from it
        raise NamesError(
            f"{hosts_path} has a block for mesh {names.mesh!r} that devmesh wrote for another project, "
            f"{block.project}, with other names ({_listed(block.body)}); installing this one "
            f"({names.project}) would take those names away from it. Give one of the two another "
            f"[mesh] name, or, to replace that project's names, run `devmesh uninstall --mesh {names.mesh}` "
            "first. Nothing was changed"
        )


def _refuse_foreign_file(managed: resolver.ManagedFile, current: bytes, names: NameSet) -> None:
    first = hostsfile.decode(current).split("\n", 1)[0]
    owner = resolver.owner_of(first)
    if owner is None:
        raise NamesError(
            f"{managed.path} exists and devmesh did not write it (its first line is not "
            f"{resolver.owner_line(names.mesh)!r}); move it away or merge by hand:\n{managed.text}"
        )
    if owner != names.mesh:
        project = _project_of(current)
        where = f" (the project in {project})" if project else ""
        raise NamesError(
            f"{managed.path} was written by devmesh for mesh {owner!r}{where}, which uses the domain "
            f"{names.domain} too; one domain's file cannot serve two meshes. Give one of them another "
            f"domain, or run `devmesh uninstall --mesh {owner}` first. Nothing was changed"
        )
    recorded = _project_of(current)
    if _another_project(recorded, names.project) and not _same_but_project(current, managed.text.encode()):
        raise NamesError(
            f"{managed.path} was written by devmesh for mesh {names.mesh!r} of another project, {recorded}, "
            f"with other content; installing this one ({names.project}) would replace it. Give one of "
            f"the two another [mesh] name, or run `devmesh uninstall --mesh {names.mesh}` first. "
            "Nothing was changed"
        )


def _project_of(content: bytes) -> str:
    return resolver.recorded_project(hostsfile.decode(content))


def _same_but_project(current: bytes, wanted: bytes) -> bool:
    """The same file apart from the project line (the same names, written for another project)."""

    def without_project(content: bytes) -> list[str]:
        lines = hostsfile.decode(content).split("\n")
        return [
            line for index, line in enumerate(lines) if not (index == 1 and line.startswith("# project: "))
        ]

    return without_project(current) == without_project(wanted)


def _listed(body: tuple[str, ...]) -> str:
    names = dict.fromkeys(name for line in body for name in line.split()[1:])
    return ", ".join(names) or "none"


def _with_backup_hint(message: str, hosts_path: Path) -> str:
    """A "fix it by hand" message, with the copy devmesh kept before its last change when there is one."""
    backup = files.backup_path(hosts_path)
    if not backup.is_file():
        return message
    return (
        f"{message}. The file as it was before devmesh's last change is in {backup} "
        "(an interrupted rewrite leaves a cut block like this; copying that back undoes it)"
    )


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise NamesError(f"{path} is a folder, not a file; point {HOSTS_FILE_ENV} at a file") from None
    except PermissionError:
        raise NamesError(f"{path} is not readable by this user; run the command with sudo") from None
