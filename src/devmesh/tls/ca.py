"""devmesh's local certificate authority: one per user, in the user's data folder, shared by every project.

The CA signs a short-lived leaf for each name the HTTPS listener is asked for (see `sni.py`); the user
trusts the CA once (`devmesh trust`) and every name then works in browsers and HTTP clients.

`cryptography` takes ~40 ms to import, so it is imported inside the functions that sign or parse, never
at module import: `devmesh --help` and `devmesh status` do not pay for it.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import hashlib
import ipaddress
import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeAlias

from devmesh.tls.names import normalise_name, parse_ip

if TYPE_CHECKING:
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    CAKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_CERT_FILE = "rootCA.pem"
CA_KEY_FILE = "rootCA-key.pem"
_LOCK_FILE = ".lock"
CA_VALIDITY = datetime.timedelta(days=3650)
# Apple and the browsers refuse server certificates valid for more than 398 days, even from a private CA.
LEAF_VALIDITY = datetime.timedelta(days=397)
# Certificates start an hour in the past, so that a client whose clock runs a little behind accepts them.
BACKDATE = datetime.timedelta(hours=1)
_COMMON_NAME_MAX = 64  # X.520 upper bound; cryptography refuses longer common names


class CAError(Exception):
    """The local CA is missing, unreadable or unusable; the message says what to do."""


def ca_dir() -> Path:
    """Where the local CA lives: `$DEVMESH_HOME/ca`, else the platform's per-user data folder."""
    home = os.environ.get("DEVMESH_HOME")
    if home:
        return Path(home).expanduser() / "ca"
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        # The XDG spec says a relative value is invalid and must be ignored.
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "devmesh" / "ca"


def fingerprint_of(der: bytes) -> str:
    """SHA-256 of a DER certificate as browsers and `openssl x509 -fingerprint -sha256` show it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[index : index + 2] for index in range(0, len(digest), 2))


class LocalCA:
    """A loaded CA: its files, and the key that signs leaves. Get one with `load` or `load_or_create`."""

    def __init__(self, directory: Path, certificate: x509.Certificate, key: CAKey) -> None:
        from cryptography.hazmat.primitives import serialization

        self.directory = directory
        self.cert_path = directory / CA_CERT_FILE
        self.key_path = directory / CA_KEY_FILE
        self._certificate = certificate
        self._key = key
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self.fingerprint = fingerprint_of(certificate.public_bytes(serialization.Encoding.DER))

    def __repr__(self) -> str:
        return f"LocalCA({str(self.directory)!r}, fingerprint={self.fingerprint[:23]}...)"

    @property
    def subject(self) -> str:
        return self._certificate.subject.rfc4514_string()

    @property
    def common_name(self) -> str:
        from cryptography.x509.oid import NameOID

        attributes = self._certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attributes[0].value) if attributes else self.subject

    @property
    def not_after(self) -> datetime.datetime:
        return self._certificate.not_valid_after_utc

    # -- loading and creating --------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path | None = None) -> LocalCA:
        """The CA in `directory` (default `ca_dir()`); CAError if it is absent, unreadable or unusable."""
        directory = directory if directory is not None else ca_dir()
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        try:
            cert_pem = cert_path.read_bytes()
        except FileNotFoundError:
            raise CAError(
                f"there is no local CA in {directory}: run `devmesh trust` to create one and trust it"
            ) from None
        except OSError as error:
            raise CAError(_unreadable(directory, error)) from None
        try:
            key_pem = key_path.read_bytes()
        except FileNotFoundError:
            raise CAError(
                f"the local CA in {directory} has lost its key ({key_path.name}); {_start_again(directory)}"
            ) from None
        except OSError as error:
            raise CAError(_unreadable(directory, error)) from None
        return cls(directory, *_parse_ca(directory, cert_pem, key_pem))

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> tuple[LocalCA, bool]:
        """The CA in `directory`, created first if there is none; the flag says it was created now.

        A CA that exists but cannot be used is an error, never silently replaced: the user may have
        trusted it, and a new one would break every browser that did.
        """
        directory = directory if directory is not None else ca_dir()
        if (directory / CA_CERT_FILE).exists():
            return cls.load(directory), False
        try:
            _make_private_dir(directory)
        except OSError as error:
            raise CAError(
                f"cannot create the local CA folder {directory} ({error.strerror or error}); "
                f"set DEVMESH_HOME to a folder you can write"
            ) from None
        # Two processes starting at once (the agent and `devmesh trust`) must not each write half a CA.
        with _exclusive_lock(directory / _LOCK_FILE):
            if (directory / CA_CERT_FILE).exists():
                return cls.load(directory), False
            certificate, key = _new_ca()
            try:
                _write_ca(directory, certificate, key)
            except OSError as error:
                raise CAError(
                    f"could not write the local CA in {directory} ({error.strerror or error}); "
                    f"free some space or set DEVMESH_HOME to a folder you can write, then run `devmesh trust`"
                ) from None
        return cls.load(directory), True

    # -- issuing -----------------------------------------------------------------------------------------

    def issue(self, names: Sequence[str], *, client: bool = False) -> tuple[bytes, bytes]:
        """A server certificate for `names` (DNS names, `*.x.y` wildcards, IP addresses), signed by this CA.

        Returns (certificate chain PEM: the leaf then the CA certificate, private key PEM). The leaf has
        an EC P-256 key, the names as subject alternative names, the serverAuth usage and a validity of
        397 days. ValueError when a name is neither a DNS name nor an IP address.
        """
        certificate_pem, key_pem, _ = self.issue_leaf(names, client=client)
        return certificate_pem + self.certificate_pem, key_pem

    def issue_leaf(
        self, names: Sequence[str], *, client: bool = False
    ) -> tuple[bytes, bytes, datetime.datetime]:
        """Like `issue`, but the leaf alone (no CA certificate) and its expiry time."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        accepted: list[str] = []
        for name in names:
            normalised = normalise_name(name, allow_wildcard=True)
            if normalised is None:
                raise ValueError(f"not a DNS name or an IP address, so no certificate for it: {name!r}")
            if normalised not in accepted:
                accepted.append(normalised)
        if not accepted:
            raise ValueError("a certificate needs at least one name")

        alternative_names: list[x509.GeneralName] = []
        for name in accepted:
            address = parse_ip(name)
            if address is not None:
                alternative_names.append(x509.IPAddress(ipaddress.ip_address(address)))
            else:
                alternative_names.append(x509.DNSName(name))

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        not_before = now - BACKDATE
        not_after = min(not_before + LEAF_VALIDITY, self.not_after)
        subject = (
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, accepted[0])])
            if len(accepted[0]) <= _COMMON_NAME_MAX
            else x509.Name([])
        )
        ca_key_identifier = self._certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                # client: also a TLS client certificate (an agent's identity on the mesh port, mTLS).
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])]
                ),
                critical=False,
            )
            # RFC 5280: with an empty subject the names extension must be critical.
            .add_extension(x509.SubjectAlternativeName(alternative_names), critical=not subject)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_identifier),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem, not_after

    def server_context(
        self,
        default_names: Sequence[str],
        *,
        cache_size: int = 1024,
        accept_name: Callable[[str], bool] | None = None,
    ) -> ssl.SSLContext:
        """A server-side TLS context (TLS 1.2+, ALPN http/1.1) for `loop.create_server(..., ssl=...)`.

        It presents a leaf for `default_names` to clients that send no server name (or one that is not a
        valid name), and a leaf issued on demand for the exact name a client asks for (SNI), cached in
        memory (LRU, `cache_size` entries). `accept_name(name) -> bool`, if given, can refuse names
        (they get the default leaf). See `SniContexts`.
        """
        from devmesh.tls.sni import SniContexts

        return SniContexts(self, default_names, max_entries=cache_size, accept_name=accept_name).default


# -- helpers --------------------------------------------------------------------------------------------


def _parse_ca(directory: Path, cert_pem: bytes, key_pem: bytes) -> tuple[x509.Certificate, CAKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    start_again = _start_again(directory)
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as error:
        raise CAError(
            f"{directory / CA_CERT_FILE} is not a PEM certificate ({error}); {start_again}"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise CAError(
            f"{directory / CA_KEY_FILE} is not an unencrypted PEM private key ({error}); {start_again}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAError(f"{directory / CA_KEY_FILE} is not an EC or RSA key; {start_again}")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != certificate.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CAError(
            f"{directory / CA_KEY_FILE} does not belong to {directory / CA_CERT_FILE}; {start_again}"
        )
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"{directory / CA_CERT_FILE} is not a CA certificate; {start_again}")
    if certificate.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise CAError(
            f"the local CA in {directory} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; {start_again}"
        )
    return certificate, key


def _unreadable(directory: Path, error: OSError) -> str:
    return (
        f"cannot read the local CA in {directory} ({error.strerror or error}); if it was created with "
        f"sudo, give it back to yourself: sudo chown -R $USER {directory}"
    )


def _start_again(directory: Path) -> str:
    return f"delete {directory} and run `devmesh trust` to create a new CA (then trust the new one again)"


def _ca_common_name() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (containers with an unnamed uid)
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    prefix, owner = "devmesh local CA (", f"{user}@{socket.gethostname()}"
    # The owner tells CAs of different machines apart in a trust store; cut it rather than fail.
    room = _COMMON_NAME_MAX - len(prefix) - 1
    return f"{prefix}{owner[:room]})"


def _new_ca() -> tuple[x509.Certificate, CAKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "devmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, _ca_common_name()),
        ]
    )
    not_before = datetime.datetime.now(datetime.UTC) - BACKDATE
    # No name constraints: the mesh's domain is configurable ([mesh].domain, custom hosts), and a CA
    # constrained to *.localhost would break every other one. The key never leaves this user's folder.
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _write_ca(directory: Path, certificate: x509.Certificate, key: CAKey) -> None:
    """The key first, then the certificate: the certificate's presence is what says "there is a CA", and
    each file appears whole (temp file + rename), so a crash at any point leaves either a complete CA or
    none (a lone key is overwritten by the next attempt)."""
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(directory / CA_KEY_FILE, key_pem, mode=0o600)
    write_atomically(
        directory / CA_CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644
    )
    _sync_dir(directory)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write `path` so that readers see the old file or the whole new one, never a part; the file has
    `mode` from its creation (a key is never readable by others, not even for a moment)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # the umask may have removed bits we asked for (0644 under umask 077)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _make_private_dir(directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)
    if sys.platform != "win32":
        os.chmod(directory, 0o700)


def _sync_dir(directory: Path) -> None:
    """Make the renames durable (POSIX); Windows has no directory handles to sync."""
    if sys.platform == "win32":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock held by one process at a time; released by the OS if the process dies."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    handle: IO[bytes] = os.fdopen(descriptor, "r+b")
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock on both platforms
