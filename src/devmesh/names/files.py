"""Writing system files that must never be left half-written: the hosts file and devmesh's DNS snippets.

The normal path is the atomic one: a temp file in the same folder, fsync, then `os.replace` over the
file, with the old file's mode and owner. A reader (or a crash) sees the old file or the new one.

The exception is a hosts file that is a bind mount, as /etc/hosts is inside Docker and most other
containers: renaming over a mount point fails with EBUSY. There the whole new content is written into
the existing file instead (then truncated and fsynced). That is not atomic; the backup written just
before is what protects the user there, and the message says where it is.

Run as root, devmesh writes only into folders root owns (and that not every user may write into): in
a folder another user controls, that user could swap the temp file for a link between two calls.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
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


def write_problem(path: Path, *, deleting: bool = False) -> WriteProblem | None:
    """Why devmesh may not write `path` (and its backup and temp file beside it), or None if it may.

    `os.access` asks the kernel, so it also says no on a read-only mount, even to root. Deleting a
    file needs no safe folder (unlinking a name never follows a link).
    """
    folder = path.parent
    if not folder.is_dir():
        return WriteProblem(f"{folder} does not exist", needs_root=False)
    unsafe = None if deleting else folder_problem(folder)
    if unsafe is not None:
        return WriteProblem(unsafe, needs_root=False)
    if path.exists() and not os.access(path, os.W_OK):
        return WriteProblem(f"{path} is not writable by this user", needs_root=not _is_root())
    if not os.access(folder, os.W_OK | os.X_OK):
        return WriteProblem(
            f"{folder} is not writable by this user (devmesh puts a backup and a temp file there)",
            needs_root=not _is_root(),
        )
    return None


def folder_problem(folder: Path) -> str | None:
    """Running as root: why devmesh will not write into `folder` (None when it may, or not root).

    A folder another user controls (Homebrew's dnsmasq.d on macOS is the user's) lets that user swap
    the files root writes there for links to files of their choosing, between two system calls.
    """
    if not _is_root():
        return None
    try:
        status = folder.stat()
    except OSError:
        return None
    advice = (
        "running as root, devmesh does not write into a folder another user controls (they could swap "
        f"its files for links to system files); make it root's (sudo chown root {folder}), or point "
        "devmesh at a root-owned folder"
    )
    if status.st_uid != 0:
        return f"{folder} belongs to {_user_name(status.st_uid)}, not root: {advice}"
    if status.st_mode & stat.S_IWOTH and not status.st_mode & stat.S_ISVTX:
        return f"{folder} is writable by every user: {advice}"
    return None


class InPlaceWriteError(OSError):
    """Rewriting a file in place failed after it was opened: it may be half-written (see the backup)."""


def write_file(path: Path, data: bytes, *, new_mode: int = 0o644, replace: Replace = os.replace) -> str:
    """Replace the content of `path` with `data`, atomically where the file system allows it.

    Returns how: "replaced" (atomic rename) or "rewritten in place" (a bind-mounted file; see the
    module docstring). Raises OSError when neither works; the file is then unchanged, except after
    InPlaceWriteError, when the backup holds its previous content.

    The temp file is created with O_EXCL and O_NOFOLLOW, and its mode, owner and label are set through
    the open descriptor: a name someone swapped for a link is never followed. Before the rename the
    name must still be that file.
    """
    unsafe = folder_problem(path.parent)
    if unsafe is not None:
        raise PermissionError(errno.EPERM, unsafe, str(path.parent))
    for leftover in temp_files(path):
        with contextlib.suppress(OSError):
            leftover.unlink()
    try:
        status: os.stat_result | None = path.stat()
    except FileNotFoundError:
        status = None
    mode = status.st_mode & 0o7777 if status else new_mode
    temporary = path.with_name(f".{path.name}{_TEMP_INFIX}{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(temporary, flags, 0o600)
    try:
        try:
            with os.fdopen(descriptor, "wb", closefd=False) as handle:
                handle.write(data)
                handle.flush()
            os.fsync(descriptor)
            _set_mode(descriptor, temporary, mode)
            if status is not None:
                _copy_security_label(path, descriptor)
            same_owner = status is None or _give_owner(descriptor, status)
            _check_still_ours(temporary, descriptor)
        finally:
            os.close(descriptor)
        if not same_owner:
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


def _user_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _set_mode(descriptor: int, temporary: Path, mode: int) -> None:
    fchmod = getattr(os, "fchmod", None)  # not on Windows before Python 3.13, where there is no chown
    if fchmod is not None:
        fchmod(descriptor, mode)
    else:
        os.chmod(temporary, mode)


def _copy_security_label(source: Path, descriptor: int) -> None:
    """Give the new file the old one's SELinux label (/etc/hosts is net_conf_t, a new file in /etc is
    etc_t); without SELinux there is no such attribute and nothing to do."""
    getxattr = getattr(os, "getxattr", None)
    setxattr = getattr(os, "setxattr", None)
    if getxattr is None or setxattr is None:
        return
    try:
        setxattr(descriptor, "security.selinux", getxattr(source, "security.selinux"))
    except OSError:
        pass


def _give_owner(descriptor: int, status: os.stat_result) -> bool:
    """Give the new file the old one's owner; False when this user may not (not root)."""
    fchown = getattr(os, "fchown", None)
    if sys.platform == "win32" or fchown is None:
        return True
    current = os.fstat(descriptor)
    if (current.st_uid, current.st_gid) == (status.st_uid, status.st_gid):
        return True
    try:
        fchown(descriptor, status.st_uid, status.st_gid)
    except PermissionError:
        return False
    return True


def _check_still_ours(temporary: Path, descriptor: int) -> None:
    """The temp file's name must still be the file written through `descriptor` (not a swapped-in link)."""
    if sys.platform == "win32":
        return
    named, written = os.lstat(temporary), os.fstat(descriptor)
    if (named.st_dev, named.st_ino) != (written.st_dev, written.st_ino):
        raise OSError(
            errno.EEXIST, "the temp file was replaced by another while devmesh wrote it", str(temporary)
        )


def _rewrite_in_place(path: Path, data: bytes) -> str:
    # Not atomic (see the module docstring): the caller wrote the backup first.
    with open(path, "r+b") as handle:  # failing here leaves the file as it was
        try:
            handle.write(data)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as error:
            raise InPlaceWriteError(error.errno, error.strerror, str(path)) from error
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
