"""The local CA: created once, reloaded, written atomically with private modes, and signing leaves that
`ssl` verifies."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devmesh.tls import CAError, LocalCA, ca
from devmesh.tls import ca_dir as ca_dir_function
from devmesh.tls.ca import CA_CERT_FILE, CA_KEY_FILE

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def test_created_once_then_reloaded_with_the_same_fingerprint(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    first, created = LocalCA.load_or_create(directory)
    assert created
    assert first.cert_path == directory / "rootCA.pem"
    assert first.key_path == directory / "rootCA-key.pem"
    again, created_again = LocalCA.load_or_create(directory)
    assert not created_again
    assert again.fingerprint == first.fingerprint
    assert LocalCA.load(directory).fingerprint == first.fingerprint
    assert len(first.fingerprint.split(":")) == 32


def test_ca_dir_follows_devmesh_home_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVMESH_HOME", str(tmp_path / "home"))
    assert ca_dir_function() == tmp_path / "home" / "ca"
    monkeypatch.delenv("DEVMESH_HOME")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        assert ca_dir_function() == tmp_path / "xdg" / "devmesh" / "ca"
        monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
        assert ca_dir_function() == Path.home() / ".local" / "share" / "devmesh" / "ca"


def test_default_directory_is_used_when_none_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVMESH_HOME", str(tmp_path))
    created, _ = LocalCA.load_or_create()
    assert created.directory == tmp_path / "ca"
    assert LocalCA.load().fingerprint == created.fingerprint


@posix_only
def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)  # a permissive umask must not make the key readable by others
    try:
        authority, _ = LocalCA.load_or_create(tmp_path / "ca")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(authority.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(authority.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(authority.cert_path.stat().st_mode) == 0o644


def test_load_of_an_empty_folder_says_to_run_devmesh_trust(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="devmesh trust"):
        LocalCA.load(tmp_path)
    with pytest.raises(CAError, match="devmesh trust"):
        LocalCA.load(tmp_path / "missing")


def test_a_crash_while_writing_leaves_no_half_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "ca"
    real_replace = os.replace

    def crash_on_the_certificate(source: str | Path, target: str | Path) -> None:
        if Path(target).name == CA_CERT_FILE:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(ca.os, "replace", crash_on_the_certificate)
    with pytest.raises(CAError, match="No space left on device"):
        LocalCA.load_or_create(directory)
    # The key was written, the certificate was not: no CA, and no temp file left behind.
    assert sorted(path.name for path in directory.iterdir()) == [".lock", CA_KEY_FILE]
    with pytest.raises(CAError, match="devmesh trust"):
        LocalCA.load(directory)

    monkeypatch.setattr(ca.os, "replace", real_replace)
    authority, created = LocalCA.load_or_create(directory)
    assert created
    assert sorted(path.name for path in directory.iterdir()) == [".lock", CA_KEY_FILE, CA_CERT_FILE]
    assert LocalCA.load(directory).fingerprint == authority.fingerprint


def test_a_broken_ca_is_reported_not_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    LocalCA.load_or_create(directory)
    (directory / CA_CERT_FILE).write_text("not a certificate\n")
    with pytest.raises(CAError, match=r"not a PEM certificate.*delete"):
        LocalCA.load_or_create(directory)
    assert (directory / CA_CERT_FILE).read_text() == "not a certificate\n"


def test_a_key_from_another_ca_is_refused(tmp_path: Path) -> None:
    LocalCA.load_or_create(tmp_path / "one")
    LocalCA.load_or_create(tmp_path / "two")
    (tmp_path / "one" / CA_KEY_FILE).write_bytes((tmp_path / "two" / CA_KEY_FILE).read_bytes())
    with pytest.raises(CAError, match="does not belong"):
        LocalCA.load(tmp_path / "one")


def test_processes_creating_the_ca_at_once_agree_on_one(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    script = (
        "import sys; from pathlib import Path; from devmesh.tls import LocalCA; "
        "print(LocalCA.load_or_create(Path(sys.argv[1]))[0].fingerprint)"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(directory)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    fingerprints = {process.communicate(timeout=30)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert fingerprints == {LocalCA.load(directory).fingerprint}


def test_the_ca_certificate_is_a_path_length_zero_root(tmp_path: Path) -> None:
    authority, _ = LocalCA.load_or_create(tmp_path / "ca")
    certificate = x509.load_pem_x509_certificate(authority.cert_path.read_bytes())
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert str(common_name).startswith("devmesh local CA (") and "@" in str(common_name)
    assert authority.common_name == common_name
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert datetime.timedelta(days=3649) < lifetime <= datetime.timedelta(days=3651)
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)


def test_issued_leaves_are_short_lived_server_certificates_signed_by_the_ca(tmp_path: Path) -> None:
    authority, _ = LocalCA.load_or_create(tmp_path / "ca")
    chain_pem, key_pem = authority.issue(["API.localhost", "127.0.0.1", "::1", "*.tenant.localhost"])
    chain = x509.load_pem_x509_certificates(chain_pem)
    assert len(chain) == 2
    leaf, root = chain
    assert root == x509.load_pem_x509_certificate(authority.cert_path.read_bytes())
    leaf.verify_directly_issued_by(root)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["api.localhost", "*.tenant.localhost"]
    assert [str(address) for address in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    authority_key = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_key = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert authority_key.key_identifier == root_key.digest
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=397)
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"
    assert b"PRIVATE KEY" in key_pem


@pytest.mark.parametrize("names", [[], ["bad name"], ["api.localhost", "evil!.com"], ["*.localhost"]])
def test_issue_refuses_what_is_not_a_name(tmp_path: Path, names: list[str]) -> None:
    authority, _ = LocalCA.load_or_create(tmp_path / "ca")
    with pytest.raises(ValueError):
        authority.issue(names)
