"""Writing system files that must never be left half-written: the hosts file and devmesh's DNS snippets.

The normal path is the atomic one: a temp file in the same folder, fsync, then `os.replace` over the
file, with the old file's mode and owner. A reader (or a crash) sees the old file or the new one.

The exception is a hosts file that is a bind mount, as /etc/hosts is inside Docker and most other
containers: renaming over a mount point fails with EBUSY. There the whole new content is written into
the existing file instead (then truncated and fsynced). That is not atomic; the backup written just
before is what protects the user there, and the message says where it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Replace = Callable[[Path, Path], None]

BACKUP_SUFFIX = ".devmesh.bak"
_TEMP_INFIX = ".devmesh-"
_TEMP_SUFFIX = ".tmp"
# Renaming over these fails where the file itself may still be rewritten: a bind-mounted file (EBUSY),
# a file on another mount than its folder (EXDEV), an immutable-directory entry on some systems (EPERM).
_CANNOT_RENAME_OVER = (errno.EBUSY, errno.EXDEV, errno.EPERM)


def backup_path(path: Path) -> Path:
    """Where the previous content of `path` is kept: `hosts` → `hosts.devmesh.bak`, beside it."""
    return path.with_name(path.name + BACKUP_SUFFIX)


def temp_files(path: Path) -> list[Path]:
    """Temp files a killed devmesh left beside `path` (they never replaced it; safe to delete)."""
    prefix = f".{path.name}{_TEMP_INFIX}"
    try:
        return sorted(
            entry
            for entry in path.parent.iterdir()
            if entry.name.startswith(prefix) and entry.name.endswith(_TEMP_SUFFIX)
        )
    except OSError:
        return []


@dataclass(frozen=True, slots=True)
class WriteProblem:
    """Why a file cannot be written; `needs_root` when running as root would fix it."""

    message: str
    needs_root: bool


def write_problem(path: Path) -> WriteProblem | None:
    """Why devmesh may not write `path` (and its backup and temp file beside it), or None if it may.

    `os.access` asks the kernel, so it also says no on a read-only mount, even to root.
    """
    folder = path.parent
    if not folder.is_dir():
        return WriteProblem(f"{folder} does not exist", needs_root=False)
    if path.exists() and not os.access(path, os.W_OK):
        return WriteProblem(f"{path} is not writable by this user", needs_root=not _is_root())
    if not os.access(folder, os.W_OK | os.X_OK):
        return WriteProblem(
            f"{folder} is not writable by this user (devmesh puts a backup and a temp file there)",
            needs_root=not _is_root(),
        )
    return None


def write_file(path: Path, data: bytes, *, new_mode: int = 0o644, replace: Replace = os.replace) -> str:
    """Replace the content of `path` with `data`, atomically where the file system allows it.

    Returns how: "replaced" (atomic rename) or "rewritten in place" (a bind-mounted file; see the
    module docstring). Raises OSError when neither works; the file is then unchanged, or (in place
    only) the backup holds its previous content.
    """
    for leftover in temp_files(path):
        with contextlib.suppress(OSError):
            leftover.unlink()
    try:
        status: os.stat_result | None = path.stat()
    except FileNotFoundError:
        status = None
    mode = status.st_mode & 0o7777 if status else new_mode
    temporary = path.with_name(f".{path.name}{_TEMP_INFIX}{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        if status is not None:
            _copy_security_label(path, temporary)
        if status is not None and not _same_owner(temporary, status):
            # We can write the file but not give a new one its owner (not root): keep the file itself.
            os.unlink(temporary)
            return _rewrite_in_place(path, data)
        replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if status is not None and error.errno in _CANNOT_RENAME_OVER:
            return _rewrite_in_place(path, data)
        raise
    _sync_folder(path.parent)
    return "replaced"


def write_backup(path: Path, data: bytes) -> Path:
    """Keep `data` (the content of `path` before a change) beside it; the previous backup is replaced."""
    backup = backup_path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    write_file(backup, data, new_mode=mode)
    return backup


def remove_file(path: Path) -> bool:
    """Delete a file devmesh owns; False when it was already gone."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _sync_folder(path.parent)
    return True


def _is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)  # not on Windows, where "root" is an elevated prompt
    return geteuid is not None and geteuid() == 0


def _copy_security_label(source: Path, target: Path) -> None:
    """Give the new file the old one's SELinux label (/etc/hosts is net_conf_t, a new file in /etc is
    etc_t); without SELinux there is no such attribute and nothing to do."""
    getxattr = getattr(os, "getxattr", None)
    setxattr = getattr(os, "setxattr", None)
    if getxattr is None or setxattr is None:
        return
    try:
        setxattr(target, "security.selinux", getxattr(source, "security.selinux"))
    except OSError:
        pass


def _same_owner(temporary: Path, status: os.stat_result) -> bool:
    if sys.platform == "win32":
        return True
    current = temporary.stat()
    if (current.st_uid, current.st_gid) == (status.st_uid, status.st_gid):
        return True
    try:
        os.chown(temporary, status.st_uid, status.st_gid)
    except PermissionError:
        return False
    return True


def _rewrite_in_place(path: Path, data: bytes) -> str:
    # Not atomic (see the module docstring): the caller wrote the backup first.
    with open(path, "r+b") as handle:
        handle.write(data)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())
    return "rewritten in place"


def _sync_folder(folder: Path) -> None:
    """Make a rename or unlink durable (POSIX); Windows has no directory handles to sync."""
    if sys.platform == "win32":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
