"""`devmesh trust --yes` / `--uninstall` logic, against trust stores in a temp folder.

Safety: every test here runs with DEVMESH_TRUST_SYSTEM_DIR and HOME pointing into tmp_path and a fake
`certutil` first on PATH (the `sandbox` fixture), or patches the table of Linux stores to tmp paths; the
real system store and NSS databases are never written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from devmesh.tls import LocalCA, install

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="shell-script fakes")

FAKE_CERTUTIL = Path(__file__).with_name("fake_certutil.py")


def write_tool(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.anchors = root / "anchors"
        self.home = root / "home"
        self.nssdb = self.home / ".pki" / "nssdb"
        self.bin = root / "bin"
        self.refresh_log = root / "refresh.log"
        self.certutil_log = root / "certutil.log"

    def nss_entries(self, database: Path | None = None) -> dict[str, list[str]]:
        store = (database or self.nssdb) / "fake-nss.json"
        return dict(json.loads(store.read_text())) if store.exists() else {}

    def refreshes(self) -> int:
        return len(self.refresh_log.read_text().splitlines()) if self.refresh_log.exists() else 0


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    box = Sandbox(tmp_path / "sandbox")
    box.anchors.mkdir(parents=True)
    box.nssdb.mkdir(parents=True)
    write_tool(box.bin, "certutil", f'exec "{sys.executable}" "{FAKE_CERTUTIL}" "$@"')
    refresh = write_tool(box.root, "refresh", f'echo "$@" >> "{box.refresh_log}"')
    monkeypatch.setenv("HOME", str(box.home))
    monkeypatch.setenv("PATH", f"{box.bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(install.SYSTEM_DIR_ENV, str(box.anchors))
    monkeypatch.setenv(install.REFRESH_ENV, f"{refresh} --now")
    monkeypatch.setenv("FAKE_CERTUTIL_LOG", str(box.certutil_log))
    return box


@pytest.fixture
def authority(tmp_path: Path) -> LocalCA:
    return LocalCA.load_or_create(tmp_path / "ca")[0]


def test_install_then_uninstall_in_the_sandbox(sandbox: Sandbox, authority: LocalCA) -> None:
    steps = install.install(authority.cert_path)
    assert [(step.target, step.status) for step in steps] == [("system", "done"), ("nss", "done")]
    assert (sandbox.anchors / "devmesh.crt").read_bytes() == authority.cert_path.read_bytes()
    assert sandbox.refreshes() == 1
    assert sandbox.nss_entries() == {"devmesh": [authority.cert_path.read_text()]}

    again = install.install(authority.cert_path)
    assert again[1].detail == "already trusted"
    assert sandbox.nss_entries() == {"devmesh": [authority.cert_path.read_text()]}

    removed = install.uninstall()
    assert [(step.target, step.status) for step in removed] == [("system", "done"), ("nss", "done")]
    assert not (sandbox.anchors / "devmesh.crt").exists()
    assert sandbox.nss_entries() == {}
    assert sandbox.refreshes() == 3

    nothing = install.uninstall()
    assert [step.status for step in nothing] == ["skipped", "skipped"]
    assert all(step.detail == "not installed" for step in nothing)


def test_an_older_devmesh_ca_in_nss_is_replaced(sandbox: Sandbox, authority: LocalCA, tmp_path: Path) -> None:
    older, _ = LocalCA.load_or_create(tmp_path / "older")
    install.install_nss(older.cert_path)
    install.install_nss(authority.cert_path)
    assert sandbox.nss_entries() == {"devmesh": [authority.cert_path.read_text()]}


def test_firefox_profiles_are_found(sandbox: Sandbox, authority: LocalCA) -> None:
    profile = sandbox.home / ".mozilla" / "firefox" / "abcd.default-release"
    profile.mkdir(parents=True)
    (profile / "cert9.db").write_bytes(b"")
    (sandbox.home / ".mozilla" / "firefox" / "not-a-profile").mkdir()
    assert install.nss_databases() == [sandbox.nssdb, profile]
    steps = install.install_nss(authority.cert_path)
    assert [step.where for step in steps] == [f"sql:{sandbox.nssdb}", f"sql:{profile}"]
    assert sandbox.nss_entries(profile) == {"devmesh": [authority.cert_path.read_text()]}


def test_a_failing_refresh_is_a_failure(
    sandbox: Sandbox, authority: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = write_tool(sandbox.root, "failing-refresh", 'echo "cannot rebuild the bundle" >&2; exit 3')
    monkeypatch.setenv(install.REFRESH_ENV, str(failing))
    step = install.install_system(authority.cert_path)
    assert step.status == "failed"
    assert "cannot rebuild the bundle" in step.detail


def test_overriding_the_folder_never_runs_the_real_refresh(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(install.REFRESH_ENV)
    store = install.system_store()
    assert isinstance(store, install.SystemStore)
    assert store.anchor == sandbox.anchors / "devmesh.crt"
    assert store.refresh is None


def test_without_certutil_nss_is_skipped_with_what_to_install(
    sandbox: Sandbox, authority: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(sandbox.root / "empty"))
    [step] = install.install_nss(authority.cert_path)
    assert step.status == "skipped" and "libnss3-tools" in step.detail


def test_without_an_nss_database_nss_is_skipped(sandbox: Sandbox, authority: LocalCA) -> None:
    sandbox.nssdb.rmdir()
    [step] = install.install_nss(authority.cert_path)
    assert step.status == "skipped" and "no NSS database" in step.detail
    assert not sandbox.certutil_log.exists()  # certutil was not even asked


def test_the_first_linux_store_with_its_tool_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authority: LocalCA
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux stores")
    monkeypatch.delenv(install.SYSTEM_DIR_ENV, raising=False)
    refresh_log = tmp_path / "refresh.log"
    fedora_tool = write_tool(tmp_path / "bin", "fedora-refresh", f'echo "$@" >> "{refresh_log}"')
    (tmp_path / "fedora").mkdir()
    monkeypatch.setattr(
        install,
        "_LINUX_STORES",
        [
            ("Debian", str(tmp_path / "debian"), "devmesh.crt", str(tmp_path / "bin" / "missing-tool"), []),
            ("Fedora", str(tmp_path / "fedora"), "devmesh.pem", str(fedora_tool), ["extract"]),
        ],
    )
    store = install.system_store()
    assert isinstance(store, install.SystemStore)
    assert store.label == "Fedora" and store.anchor == tmp_path / "fedora" / "devmesh.pem"
    step = install.install_system(authority.cert_path)
    assert step.status == "done", step.detail
    assert refresh_log.read_text() == "extract\n"
    assert "sudo cp" in store.manual_install(authority.cert_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_a_store_we_may_not_write_is_skipped_with_the_command_to_run(
    sandbox: Sandbox, authority: LocalCA
) -> None:
    sandbox.anchors.chmod(0o500)
    try:
        step = install.install_system(authority.cert_path)
    finally:
        sandbox.anchors.chmod(0o700)
    assert step.status == "skipped"
    assert "needs root; run: sudo cp" in step.detail
