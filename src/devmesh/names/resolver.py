"""Wildcard names through a local DNS server: the dnsmasq snippet and what points the system at it.

A hosts file cannot say `*.tenant.shop.test`. A DNS server can: dnsmasq's `address=/shop.test/127.0.0.1`
answers for the domain and every name under it. The system resolver then has to ask dnsmasq for that
domain, and only that domain:

- Linux with systemd-resolved: a drop-in with `DNS=127.0.0.1` and the routing-only domain
  `Domains=~shop.test`; a DNS server with only routing domains is asked for those domains and nothing
  else, so the rest of the machine's DNS is untouched.
- macOS: `/etc/resolver/shop.test` with `nameserver 127.0.0.1`, the per-domain resolver macOS reads.
- Linux where dnsmasq already is the system resolver (resolv.conf says 127.0.0.1): the snippet alone.

Every file here belongs to devmesh: a name with the mesh in it, or (macOS, where the file name must be
the domain) a first line that says devmesh manages it. devmesh never edits resolv.conf, resolved.conf or
dnsmasq.conf, and never restarts a service: it prints the command for that.

Folders are overridable, for tests and unusual systems: DEVMESH_DNSMASQ_DIR, DEVMESH_RESOLVED_DIR,
DEVMESH_RESOLVER_DIR (macOS).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devmesh.names.plan import NameSet

DNSMASQ_DIR_ENV = "DEVMESH_DNSMASQ_DIR"
RESOLVED_DIR_ENV = "DEVMESH_RESOLVED_DIR"
RESOLVER_DIR_ENV = "DEVMESH_RESOLVER_DIR"

_DNSMASQ_DIRS = {
    "linux": ["/etc/dnsmasq.d"],
    # Homebrew's dnsmasq reads this folder once `conf-dir=...dnsmasq.d/,*.conf` is enabled in dnsmasq.conf.
    "darwin": ["/opt/homebrew/etc/dnsmasq.d", "/usr/local/etc/dnsmasq.d"],
}
_RESOLVED_DIR = "/etc/systemd/resolved.conf.d"
_RESOLVED_RUNNING = "/run/systemd/resolve/stub-resolv.conf"
_MACOS_RESOLVER_DIR = "/etc/resolver"


def owner_line(mesh: str) -> str:
    """The first line of every file devmesh writes here: how `uninstall` knows the file is its own."""
    return f"# managed by devmesh (mesh {mesh}); remove with devmesh uninstall"


@dataclass(frozen=True, slots=True)
class ManagedFile:
    """A file devmesh owns entirely, with its whole content."""

    path: Path
    text: str
    purpose: str
    then: str  # what the user runs so that the change takes effect ("" when nothing)
    make_folder: bool = False  # its folder may be missing and is then made (/etc/resolver, resolved.conf.d)


@dataclass(frozen=True, slots=True)
class ResolverPlan:
    """The files that make a domain resolve through a local dnsmasq, or why that is not possible here."""

    files: tuple[ManagedFile, ...]
    missing: str  # "" when the files are enough; else what the user has to set up first


def dnsmasq_text(names: NameSet) -> str:
    lines = [
        owner_line(names.mesh),
        f"# {names.domain} and every name under it (wildcards included) resolve to this machine.",
        *(f"address=/{names.domain}/{address}" for address in names.addresses),
    ]
    return "\n".join(lines) + "\n"


def resolved_text(names: NameSet) -> str:
    lines = [
        owner_line(names.mesh),
        f"# Ask the local dnsmasq for {names.domain}, and only for it (~ makes it a routing-only domain).",
        "[Resolve]",
        "DNS=127.0.0.1",
        f"Domains=~{names.domain}",
    ]
    return "\n".join(lines) + "\n"


def macos_resolver_text(names: NameSet) -> str:
    lines = [
        owner_line(names.mesh),
        f"# {names.domain} is answered by the local dnsmasq.",
        "nameserver 127.0.0.1",
    ]
    return "\n".join(lines) + "\n"


def _folder(env: Mapping[str, str], variable: str, candidates: list[str]) -> Path | None:
    override = env.get(variable)
    if override:
        return Path(override)
    for candidate in candidates:
        if Path(candidate).is_dir():
            return Path(candidate)
    return None


def dnsmasq_dir(platform: str, env: Mapping[str, str]) -> Path | None:
    return _folder(env, DNSMASQ_DIR_ENV, _DNSMASQ_DIRS.get(platform, []))


def resolved_dir(env: Mapping[str, str]) -> Path | None:
    """systemd-resolved's drop-in folder when it is the system resolver here (or overridden), else None."""
    override = env.get(RESOLVED_DIR_ENV)
    if override:
        return Path(override)
    return Path(_RESOLVED_DIR) if Path(_RESOLVED_RUNNING).exists() else None


def resolver_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get(RESOLVER_DIR_ENV) or _MACOS_RESOLVER_DIR)


def resolver_plan(names: NameSet, *, platform: str, env: Mapping[str, str] | None = None) -> ResolverPlan:
    """The managed files for `names` on `platform` (sys.platform), found through `env` overrides."""
    env = os.environ if env is None else env
    if platform == "win32":
        return ResolverPlan(
            (),
            "Windows has no per-domain resolver setting devmesh can use; wildcard names need a local "
            "DNS server (e.g. Acrylic DNS Proxy) with a rule sending "
            f"*.{names.domain} to 127.0.0.1",
        )
    file_name = f"devmesh-{names.mesh}.conf"
    folder = dnsmasq_dir(platform, env)
    install_hint = "brew install dnsmasq" if platform == "darwin" else "sudo apt install dnsmasq (or dnf)"
    if folder is None:
        return ResolverPlan(
            (),
            f"wildcard names need dnsmasq, and no dnsmasq.d folder was found: install it ({install_hint}), "
            f"or set {DNSMASQ_DIR_ENV} to the folder your dnsmasq reads (conf-dir)",
        )
    restart = (
        "sudo brew services restart dnsmasq" if platform == "darwin" else "sudo systemctl restart dnsmasq"
    )
    files = [ManagedFile(folder / file_name, dnsmasq_text(names), "dnsmasq answers for the domain", restart)]
    if platform == "darwin":
        files.append(
            ManagedFile(
                resolver_dir(env) / names.domain,
                macos_resolver_text(names),
                "macOS asks dnsmasq for the domain",
                "",  # read on the next lookup
                make_folder=True,
            )
        )
    else:
        drop_ins = resolved_dir(env)
        if drop_ins is not None:
            files.append(
                ManagedFile(
                    drop_ins / file_name,
                    resolved_text(names),
                    "systemd-resolved asks dnsmasq for the domain",
                    "sudo systemctl restart systemd-resolved",
                    make_folder=True,  # resolved.conf.d is optional: many systems do not have it yet
                )
            )
    return ResolverPlan(tuple(files), "")


def owned_files(mesh: str | None, *, platform: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """The files devmesh wrote for `mesh` (for every mesh when None) that exist now."""
    env = os.environ if env is None else env
    found: list[Path] = []
    folders = [dnsmasq_dir(platform, env), resolved_dir(env) if platform != "darwin" else None]
    if platform == "darwin" or env.get(RESOLVER_DIR_ENV):
        folders.append(resolver_dir(env))
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and _is_ours(entry, mesh):
                found.append(entry)
    return found


def _is_ours(path: Path, mesh: str | None) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline().rstrip("\n")
    except OSError:
        return False
    if mesh is not None:
        return first == owner_line(mesh)
    return first.startswith("# managed by devmesh (mesh ") and first.endswith("remove with devmesh uninstall")
