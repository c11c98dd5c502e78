"""Putting the local CA into the trust stores of this machine (`devmesh trust --yes`), and taking it out.

Only what can be done without a prompt is done: the system store on Linux when we may write its anchor
folder (root), and the NSS databases of Chromium and Firefox when `certutil` is installed. Everything else
is reported as skipped, with the command the user can run instead.

Tests point the system store somewhere harmless with two variables, so that no test can touch the
machine's real trust store:

- `DEVMESH_TRUST_SYSTEM_DIR`: the anchor folder to write `devmesh.crt` into, instead of the system's;
- `DEVMESH_TRUST_REFRESH`: the command run after writing or removing it (none when unset, never the
  real `update-ca-certificates` once the folder is overridden).

NSS databases are found under `$HOME`, which tests set to a temp folder.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from devmesh.tls.ca import write_atomically

SYSTEM_DIR_ENV = "DEVMESH_TRUST_SYSTEM_DIR"
REFRESH_ENV = "DEVMESH_TRUST_REFRESH"
NSS_NICKNAME = "devmesh"
_COMMAND_TIMEOUT_S = 120.0  # update-ca-certificates rebuilds every hash link: seconds on a slow disk
_SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])  # not on a non-root user's PATH

Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class Step:
    """One trust store devmesh tried to change, and what happened."""

    target: str  # "system" or "nss"
    where: str  # the file or database, or "" when there was none
    status: Status
    detail: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class SystemStore:
    """A Linux distribution's folder of extra trust anchors and the command that rebuilds its bundle."""

    label: str
    anchor: Path  # the file devmesh writes
    refresh: list[str] | None

    def manual_install(self, cert_path: Path) -> str:
        command = f"sudo cp {shlex.quote(str(cert_path))} {shlex.quote(str(self.anchor))}"
        return command + (f" && sudo {shlex.join(self.refresh)}" if self.refresh else "")

    def manual_uninstall(self) -> str:
        command = f"sudo rm {shlex.quote(str(self.anchor))}"
        return command + (f" && sudo {shlex.join(self.refresh)}" if self.refresh else "")


# (label, anchor folder, file name, refresh tool, its arguments), in the order they are tried.
_LINUX_STORES = [
    ("Debian/Ubuntu/Alpine", "/usr/local/share/ca-certificates", "devmesh.crt", "update-ca-certificates", []),
    ("Fedora/RHEL", "/etc/pki/ca-trust/source/anchors", "devmesh.pem", "update-ca-trust", ["extract"]),
    ("Arch", "/etc/ca-certificates/trust-source/anchors", "devmesh.crt", "update-ca-trust", ["extract"]),
    ("openSUSE", "/etc/pki/trust/anchors", "devmesh.pem", "update-ca-certificates", []),
]


def system_store() -> SystemStore | str:
    """This machine's system trust store, or why there is none devmesh can manage."""
    override = os.environ.get(SYSTEM_DIR_ENV)
    if override:
        refresh = os.environ.get(REFRESH_ENV)
        return SystemStore(
            f"${SYSTEM_DIR_ENV}", Path(override) / "devmesh.crt", shlex.split(refresh) if refresh else None
        )
    if sys.platform == "darwin":
        return "not automated on macOS: adding a trusted root asks for your password (see the command above)"
    if sys.platform == "win32":
        return "not automated on Windows: it needs an administrator prompt (see the command above)"
    search_path = os.pathsep.join([os.environ.get("PATH", ""), _SBIN])
    for label, folder, file_name, tool, arguments in _LINUX_STORES:
        executable = shutil.which(tool, path=search_path)
        if executable and Path(folder).is_dir():
            return SystemStore(label, Path(folder) / file_name, [executable, *arguments])
    return "no known system trust store here (update-ca-certificates or update-ca-trust)"


def install(cert_path: Path) -> list[Step]:
    """Add the CA certificate at `cert_path` to every store devmesh can change here without a prompt."""
    return [install_system(cert_path), *install_nss(cert_path)]


def uninstall() -> list[Step]:
    """Remove what `install` added."""
    return [uninstall_system(), *uninstall_nss()]


# -- the system store ----------------------------------------------------------------------------------


def install_system(cert_path: Path) -> Step:
    store = system_store()
    if isinstance(store, str):
        return Step("system", "", "skipped", store)
    where = str(store.anchor)
    if not store.anchor.parent.is_dir():
        return Step("system", where, "skipped", f"{store.anchor.parent} does not exist")
    if not os.access(store.anchor.parent, os.W_OK):
        # Not "sudo devmesh trust --yes": sudo changes HOME, and with it which CA devmesh would find.
        return Step("system", where, "skipped", f"needs root; run: {store.manual_install(cert_path)}")
    pem = cert_path.read_bytes()
    try:
        write_atomically(store.anchor, pem, mode=0o644)
    except OSError as error:
        return Step("system", where, "failed", f"cannot write {store.anchor}: {error.strerror or error}")
    return _refresh(store, where, f"added to the {store.label} trust store")


def uninstall_system() -> Step:
    store = system_store()
    if isinstance(store, str):
        return Step("system", "", "skipped", store)
    where = str(store.anchor)
    if not store.anchor.exists():
        return Step("system", where, "skipped", "not installed")
    try:
        store.anchor.unlink()
    except PermissionError:
        return Step("system", where, "skipped", f"needs root; run: {store.manual_uninstall()}")
    except OSError as error:
        return Step("system", where, "failed", f"cannot remove {store.anchor}: {error.strerror or error}")
    return _refresh(store, where, f"removed from the {store.label} trust store")


def _refresh(store: SystemStore, where: str, done: str) -> Step:
    if not store.refresh:
        return Step("system", where, "done", done)
    result = _run(store.refresh)
    if result is None or result.returncode != 0:
        reason = _last_line(result) if result is not None else f"{store.refresh[0]} did not finish"
        return Step("system", where, "failed", f"`{shlex.join(store.refresh)}` failed: {reason}")
    return Step("system", where, "done", f"{done} ({shlex.join(store.refresh)} ran)")


# -- NSS (Chromium and Firefox on Linux, Firefox elsewhere) ---------------------------------------------


def nss_databases(home: Path | None = None) -> list[Path]:
    """The NSS databases that exist for this user: Chromium's shared one, and each Firefox profile."""
    home = home if home is not None else Path.home()
    found = []
    shared = home / ".pki" / "nssdb"
    if shared.is_dir():
        found.append(shared)
    for profiles in (
        home / ".mozilla" / "firefox",
        home / "snap" / "firefox" / "common" / ".mozilla" / "firefox",
        home / ".var" / "app" / "org.mozilla.firefox" / ".mozilla" / "firefox",
        home / "Library" / "Application Support" / "Firefox" / "Profiles",
    ):
        if profiles.is_dir():
            found.extend(sorted(database.parent for database in profiles.glob("*/cert9.db")))
    return found


def install_nss(cert_path: Path) -> list[Step]:
    targets = _nss_targets()
    if isinstance(targets, Step):
        return [targets]
    certutil, databases = targets
    steps = []
    ours = _normalised_pem(cert_path.read_bytes())
    for database in databases:
        where = f"sql:{database}"
        present = _run([certutil, "-d", where, "-L", "-n", NSS_NICKNAME, "-a"])
        if present is not None and present.returncode == 0:
            if _normalised_pem(present.stdout) == ours:
                steps.append(Step("nss", where, "done", "already trusted"))
                continue
            # An older devmesh CA under our nickname (the CA folder was deleted and made again).
            _delete_nss_entries(certutil, where)
        added = _run([certutil, "-d", where, "-A", "-t", "C,,", "-n", NSS_NICKNAME, "-i", str(cert_path)])
        if added is None or added.returncode != 0:
            reason = _last_line(added) if added is not None else "certutil did not finish"
            steps.append(Step("nss", where, "failed", f"certutil -A failed: {reason}"))
        else:
            steps.append(Step("nss", where, "done", f"added as {NSS_NICKNAME!r}"))
    return steps


def uninstall_nss() -> list[Step]:
    targets = _nss_targets()
    if isinstance(targets, Step):
        return [targets]
    certutil, databases = targets
    steps = []
    for database in databases:
        where = f"sql:{database}"
        if _delete_nss_entries(certutil, where):
            steps.append(Step("nss", where, "done", f"removed {NSS_NICKNAME!r}"))
        else:
            steps.append(Step("nss", where, "skipped", "not installed"))
    return steps


def _nss_targets() -> tuple[str, list[Path]] | Step:
    """certutil and the databases to change, or the step saying why there are none."""
    if sys.platform == "win32":
        # Windows' own certutil.exe is another tool; Firefox there trusts the Windows store.
        return Step("nss", "", "skipped", "not needed on Windows: browsers use the Windows store")
    databases = nss_databases()
    if not databases:
        return Step(
            "nss", "", "skipped", "no NSS database (~/.pki/nssdb or a Firefox profile): nothing to update"
        )
    certutil = shutil.which("certutil")
    if certutil is None:
        return Step(
            "nss",
            ", ".join(f"sql:{database}" for database in databases),
            "skipped",
            "certutil not found: install libnss3-tools (Debian/Ubuntu), nss-tools (Fedora) or nss "
            "(Homebrew), then run `devmesh trust --yes` again",
        )
    return certutil, databases


def _delete_nss_entries(certutil: str, where: str) -> bool:
    """Delete every certificate under our nickname; True if there was one."""
    removed = False
    for _ in range(10):  # NSS keeps several certificates under one nickname; each -D removes one
        present = _run([certutil, "-d", where, "-L", "-n", NSS_NICKNAME])
        if present is None or present.returncode != 0:
            break
        deleted = _run([certutil, "-d", where, "-D", "-n", NSS_NICKNAME])
        if deleted is None or deleted.returncode != 0:
            break
        removed = True
    return removed


# -- helpers --------------------------------------------------------------------------------------------


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """Run a tool without a terminal (nothing may prompt); None if it cannot start or hangs."""
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


def _normalised_pem(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    return "".join(text.split())
