"""`devmesh trust` as a user runs it, in fresh processes.

Safety: every run gets DEVMESH_HOME and HOME inside tmp_path, and the runs with --yes / --uninstall also
get DEVMESH_TRUST_SYSTEM_DIR (a tmp folder instead of the system's anchors), DEVMESH_TRUST_REFRESH (a
script that only logs) and a fake `certutil` first on PATH. The host's real trust stores are checked to be
untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import devmesh

FAKE_CERTUTIL = Path(__file__).parent.parent / "tls" / "fake_certutil.py"
REAL_ANCHORS = [
    Path("/usr/local/share/ca-certificates/devmesh.crt"),
    Path("/etc/pki/ca-trust/source/anchors/devmesh.pem"),
    Path("/etc/ca-certificates/trust-source/anchors/devmesh.crt"),
    Path("/etc/pki/trust/anchors/devmesh.pem"),
]
FINGERPRINT = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


def isolated(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    return {"DEVMESH_HOME": str(tmp_path / "devmesh-home"), "HOME": str(tmp_path / "home")}


def sandboxed(tmp_path: Path, *, refresh_exit: int = 0) -> dict[str, str]:
    """`isolated`, plus trust stores that live in tmp_path."""
    env = isolated(tmp_path)
    (tmp_path / "anchors").mkdir(exist_ok=True)
    (tmp_path / "home" / ".pki" / "nssdb").mkdir(parents=True, exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    certutil = bin_dir / "certutil"
    certutil.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CERTUTIL}" "$@"\n')
    certutil.chmod(0o755)
    refresh = tmp_path / "refresh"
    refresh.write_text(f'#!/bin/sh\necho ran >> "{tmp_path / "refresh.log"}"\nexit {refresh_exit}\n')
    refresh.chmod(0o755)
    return {
        **env,
        "DEVMESH_TRUST_SYSTEM_DIR": str(tmp_path / "anchors"),
        "DEVMESH_TRUST_REFRESH": str(refresh),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.fixture(autouse=True)
def real_stores_untouched() -> object:
    before = {path: path.exists() for path in REAL_ANCHORS}
    yield
    assert {path: path.exists() for path in REAL_ANCHORS} == before


def test_trust_creates_the_ca_once(tmp_path: Path) -> None:
    env = isolated(tmp_path)
    first = devmesh("trust", "--json", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)
    assert document["created"] is True
    assert document["ca"] == str(tmp_path / "devmesh-home" / "ca" / "rootCA.pem")
    assert Path(document["ca"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "devmesh-home" / "ca" / "rootCA-key.pem").exists()
    assert FINGERPRINT.match(document["fingerprint"])
    assert document["installed"] == []

    second = devmesh("trust", "--json", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["created"] is False
    assert again["fingerprint"] == document["fingerprint"]

    text = devmesh("trust", cwd=tmp_path, env=env)
    assert text.returncode == 0, text.stderr
    assert "using the local certificate authority" in text.stdout
    assert document["fingerprint"] in text.stdout
    for hint in (
        "update-ca-certificates",
        "trust anchor",
        "security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain",
        "certutil -addstore -f ROOT",
        "certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n devmesh",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
    ):
        assert hint in text.stdout


def test_help_shows_an_example(tmp_path: Path) -> None:
    result = devmesh("trust", "--help", cwd=tmp_path, env=isolated(tmp_path))
    assert result.returncode == 0
    assert "Examples:" in result.stdout and "devmesh trust --yes" in result.stdout
    assert "trust" in devmesh("--help", cwd=tmp_path).stdout
    assert not (tmp_path / "devmesh-home").exists()  # --help creates nothing


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = devmesh("trust", "--bogus", cwd=tmp_path, env=isolated(tmp_path))
    assert result.returncode == 2


def test_a_broken_ca_is_a_failure_that_says_what_to_do(tmp_path: Path) -> None:
    env = isolated(tmp_path)
    folder = tmp_path / "devmesh-home" / "ca"
    folder.mkdir(parents=True)
    (folder / "rootCA.pem").write_text("garbage\n")
    result = devmesh("trust", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "delete" in result.stderr and "devmesh trust" in result.stderr
    assert (folder / "rootCA.pem").read_text() == "garbage\n"


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script fakes")
def test_yes_installs_into_the_stores_and_uninstall_removes(tmp_path: Path) -> None:
    env = sandboxed(tmp_path)
    result = devmesh("trust", "--yes", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    anchor = tmp_path / "anchors" / "devmesh.crt"
    nssdb = tmp_path / "home" / ".pki" / "nssdb"
    assert document["installed"] == [str(anchor), f"sql:{nssdb}"]
    assert [step["status"] for step in document["steps"]] == ["done", "done"]
    ca_pem = Path(document["ca"]).read_text()
    assert anchor.read_text() == ca_pem
    assert (tmp_path / "refresh.log").read_text() == "ran\n"
    assert json.loads((nssdb / "fake-nss.json").read_text()) == {"devmesh": [ca_pem]}

    text = devmesh("trust", "--yes", cwd=tmp_path, env=env)
    assert text.returncode == 0, text.stderr
    assert re.search(r"done\s+system trust store", text.stdout)
    assert "already trusted" in text.stdout

    removed = devmesh("trust", "--uninstall", "--json", cwd=tmp_path, env=env)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["removed"] == [str(anchor), f"sql:{nssdb}"]
    assert not anchor.exists()
    assert json.loads((nssdb / "fake-nss.json").read_text()) == {}
    assert Path(document["ca"]).exists()  # the CA itself stays


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script fakes")
def test_yes_reports_each_skip_and_failure(tmp_path: Path) -> None:
    env = sandboxed(tmp_path, refresh_exit=1)
    env["PATH"] = str(tmp_path / "no-tools")  # no certutil
    result = devmesh("trust", "--yes", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert re.search(r"failed\s+system trust store .*refresh.* failed", result.stdout)
    assert re.search(r"skipped\s+NSS .*certutil not found", result.stdout)


def test_help_stays_fast_without_cryptography(tmp_path: Path) -> None:
    timing = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "devmesh", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, **isolated(tmp_path)},
        timeout=60,
        check=True,
    )
    assert "cryptography" not in timing.stderr
    assert "devmesh.tls" not in timing.stderr
