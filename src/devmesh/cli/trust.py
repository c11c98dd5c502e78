"""`devmesh trust`: create the local CA, show where it is, and trust it in this machine's stores.

Only click at import time: `main.py` imports this module to register the command, and `devmesh --help`
must stay fast. The CA code (and `cryptography`) is imported when the command runs.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from devmesh.tls.install import Step

EXIT_FAILURE = 1
EXIT_USAGE = 2


def manual_steps(cert_path: Path) -> list[tuple[str, str]]:
    """(where, command) to trust the CA by hand, for every platform and the common HTTP clients."""
    cert = shlex.quote(str(cert_path))
    return [
        (
            "Debian/Ubuntu",
            f"sudo cp {cert} /usr/local/share/ca-certificates/devmesh.crt && sudo update-ca-certificates",
        ),
        ("Fedora/RHEL/Arch", f"sudo trust anchor --store {cert}"),
        (
            "macOS",
            f"sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {cert}",
        ),
        ("Windows (admin prompt)", f'certutil -addstore -f ROOT "{cert_path}"'),
        (
            "Chromium/Firefox (NSS)",
            f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n devmesh -i {cert}   "
            "(Firefox: -d sql:<profile folder>)",
        ),
        ("Node.js", f"export NODE_EXTRA_CA_CERTS={cert}   (added to Node's own list)"),
        (
            "Python, curl",
            f"export SSL_CERT_FILE={cert} REQUESTS_CA_BUNDLE={cert}   "
            "(replaces the default list: only devmesh's names verify; after the system step, point them "
            "at the system bundle instead, e.g. /etc/ssl/certs/ca-certificates.crt)",
        ),
    ]


def manual_removal(cert_path: Path, common_name: str) -> list[tuple[str, str]]:
    cert = shlex.quote(str(cert_path))
    return [
        (
            "Debian/Ubuntu",
            "sudo rm /usr/local/share/ca-certificates/devmesh.crt && sudo update-ca-certificates --fresh",
        ),
        ("Fedora/RHEL/Arch", f"sudo trust anchor --remove {cert}"),
        ("macOS", f"sudo security remove-trusted-cert -d {cert}"),
        ("Windows (admin prompt)", f'certutil -delstore ROOT "{common_name}"'),
        ("Chromium/Firefox (NSS)", "certutil -d sql:$HOME/.pki/nssdb -D -n devmesh"),
    ]


@click.command()
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Also add the CA to the trust stores devmesh can change here without a prompt "
    "(the Linux system store when run as root, Chromium/Firefox NSS databases when certutil exists).",
)
@click.option("--uninstall", is_flag=True, help="Remove the CA from the stores --yes added it to.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def trust(yes: bool, uninstall: bool, as_json: bool) -> None:
    """Create devmesh's local certificate authority (once per user) and show how to trust it.

    The HTTPS listener ([proxy] https = "127.0.0.1:7443") presents certificates signed by this CA for
    every name it serves. Trust it once and https://api.localhost:7443 works without warnings. The CA
    lives in $DEVMESH_HOME/ca, else the user's data folder (~/.local/share/devmesh/ca on Linux).

    \b
    Examples:
      devmesh trust               # create the CA, print how to trust it
      devmesh trust --yes         # trust it where possible without prompts
      devmesh trust --uninstall   # take it out of those stores again
    """
    from devmesh.tls import CAError, LocalCA, ca_dir

    if uninstall:
        _uninstall(as_json, ca_dir())
    try:
        ca, created = LocalCA.load_or_create()
    except CAError as error:
        _fail(str(error))
    steps: list[Step] = []
    if yes:
        from devmesh.tls.install import install

        steps = install(ca.cert_path)
    failed = any(step.status == "failed" for step in steps)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ca": str(ca.cert_path),
                    "fingerprint": ca.fingerprint,
                    "created": created,
                    "installed": [step.where for step in steps if step.status == "done"],
                    "steps": [step.to_json() for step in steps],
                },
                indent=2,
            )
        )
        raise SystemExit(EXIT_FAILURE if failed else 0)

    if created:
        click.echo(f"created a local certificate authority in {ca.directory}")
    else:
        click.echo(f"using the local certificate authority in {ca.directory}")
    click.echo(f"  certificate  {ca.cert_path}")
    click.echo(f"  key          {ca.key_path}   (keep it private: anyone with it can impersonate any site)")
    click.echo(f"  SHA-256      {ca.fingerprint}")
    click.echo(f"  valid until  {ca.not_after:%Y-%m-%d}")
    if steps:
        click.echo("")
        _print_steps(steps)
    click.echo("")
    click.echo("To trust it by hand (once per machine; restart the browser afterwards):")
    _print_pairs(manual_steps(ca.cert_path))
    if not yes:
        click.echo("")
        click.echo("`devmesh trust --yes` does what it can here without prompting; --uninstall undoes it.")
    raise SystemExit(EXIT_FAILURE if failed else 0)


def _uninstall(as_json: bool, directory: Path) -> NoReturn:
    from devmesh.tls import CAError, LocalCA
    from devmesh.tls.ca import CA_CERT_FILE
    from devmesh.tls.install import uninstall

    # Removal needs no CA (the stores are found by file name and nickname), but names it when it can.
    try:
        ca: LocalCA | None = LocalCA.load(directory)
    except CAError:
        ca = None
    steps = uninstall()
    failed = any(step.status == "failed" for step in steps)
    cert_path = directory / CA_CERT_FILE
    if as_json:
        document: dict[str, Any] = {
            "ca": str(cert_path),
            "fingerprint": ca.fingerprint if ca else None,
            "removed": [step.where for step in steps if step.status == "done"],
            "steps": [step.to_json() for step in steps],
        }
        click.echo(json.dumps(document, indent=2))
        raise SystemExit(EXIT_FAILURE if failed else 0)
    _print_steps(steps)
    click.echo("")
    click.echo("Where devmesh could not remove it, by hand:")
    _print_pairs(manual_removal(cert_path, ca.common_name if ca else "devmesh local CA"))
    click.echo(
        f"\nThe CA itself stays in {directory}; delete that folder to forget it "
        "(the next `devmesh trust` makes a new one, which must be trusted again)."
    )
    raise SystemExit(EXIT_FAILURE if failed else 0)


def _print_steps(steps: list[Step]) -> None:
    labels = {"system": "system trust store", "nss": "NSS (Chromium, Firefox)"}
    for step in steps:
        where = f" {step.where}" if step.where else ""
        click.echo(f"  {step.status:<8} {labels.get(step.target, step.target)}{where}: {step.detail}")


def _print_pairs(pairs: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in pairs)
    for label, command in pairs:
        click.echo(f"  {label:<{width}}  {command}")


def _fail(message: str) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(EXIT_FAILURE)
