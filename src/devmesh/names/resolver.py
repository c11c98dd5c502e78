"""Wildcard names through a local DNS server: the dnsmasq snippet and what points the system at it.

A hosts file cannot say `*.tenant.shop.test`. A DNS server can: dnsmasq's `address=/shop.test/127.0.0.1`
answers for the domain and every name under it. The system resolver then has to ask dnsmasq for that
domain, and only that domain:

- macOS: `/etc/resolver/shop.test` with `nameserver 127.0.0.1`, the per-domain resolver macOS reads.
- Linux with systemd-resolved: nothing devmesh writes can do it without changing the whole machine's
  DNS. A `DNS=` in resolved.conf(.d) is a global server, and a global server is always also a default
  route, so every lookup would go to dnsmasq too (whose upstream is usually resolved's own stub: a
  loop). Per-domain routing needs a link of its own with `DNS=127.0.0.1`, `Domains=~shop.test` and no
  default route; devmesh prints those commands (`ResolverPlan.manual`) and leaves running them to the
  user. Older devmesh versions wrote such a global drop-in; `install` and `uninstall` delete it.
- Linux where dnsmasq already is the system resolver (resolv.conf says 127.0.0.1): the snippet alone.

The snippet also says `listen-address=127.0.0.1` and `bind-interfaces`: without them dnsmasq binds the
wildcard address on port 53 and fails beside systemd-resolved's stub (127.0.0.53:53), as on Ubuntu.

Every file here belongs to devmesh: a name with the mesh in it, or (macOS, where the file name must be
the domain) a first line that says devmesh manages it. devmesh never edits resolv.conf, resolved.conf or
dnsmasq.conf, never changes network links, and never restarts a service: it prints the commands.

Folders are overridable, for tests and unusual systems: DEVMESH_DNSMASQ_DIR, DEVMESH_RESOLVED_DIR
(set, it also says systemd-resolved is the system resolver), DEVMESH_RESOLVER_DIR (macOS).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Collection, Mapping
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


_OWNER_LINE = re.compile(r"^# managed by devmesh \(mesh (?P<mesh>\S+)\); remove with devmesh uninstall$")
_ADDRESS_LINE = re.compile(r"^address=/([^/\s]+)/", re.MULTILINE)


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
    manual: tuple[str, ...] = ()  # steps devmesh leaves to the user (it does not change system DNS)


def project_line(names: NameSet) -> str:
    """The second line of a file devmesh writes: which project folder it was written for."""
    return f"# project: {names.project}"


def dnsmasq_text(names: NameSet) -> str:
    lines = [
        owner_line(names.mesh),
        *([project_line(names)] if names.project else []),
        f"# {names.domain} and every name under it (wildcards included) resolve to this machine.",
        "# Loopback only, bound to that address alone (beside systemd-resolved's stub on 127.0.0.53).",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        *(f"address=/{names.domain}/{address}" for address in names.addresses),
    ]
    return "\n".join(lines) + "\n"


def macos_resolver_text(names: NameSet) -> str:
    lines = [
        owner_line(names.mesh),
        *([project_line(names)] if names.project else []),
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
    if folder is None or not folder.is_dir():
        found = (
            "no dnsmasq.d folder was found"
            if folder is None
            else f"{folder} ({DNSMASQ_DIR_ENV}) is no folder"
        )
        return ResolverPlan(
            (),
            f"wildcard names need dnsmasq, and {found}: install it ({install_hint}), "
            f"or set {DNSMASQ_DIR_ENV} to the folder your dnsmasq reads (conf-dir)",
        )
    restart = _restart_dnsmasq(platform)
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
    elif resolved_dir(env) is not None:
        domains = sorted({names.domain, *snippet_domains(folder, skip_mesh=names.mesh)})
        return ResolverPlan(tuple(files), "", resolved_steps(domains))
    return ResolverPlan(tuple(files), "")


# A dummy link that carries only the devmesh domains, with dnsmasq as its DNS server and no default
# route. resolved uses a link's servers only when the link is up and has a routable address: a /32
# from the link-local range on a link of its own routes nothing anywhere else.
RESOLVED_LINK = "devmesh0"
_LINK_ADDRESS = "169.254.53.53/32"


def resolved_steps(domains: list[str]) -> tuple[str, ...]:
    """What the user runs so that systemd-resolved sends `domains`, and only them, to dnsmasq."""
    quoted = " ".join(shlex.quote(f"~{domain}") for domain in domains)
    link = RESOLVED_LINK
    return (
        "systemd-resolved runs here, and devmesh does not change system DNS (a global DNS= would send "
        f"every lookup to dnsmasq too). To send {', '.join(domains)}, and nothing else, to dnsmasq, give "
        f"them a network link of their own, {link}. Until the next reboot:",
        f"  sudo ip link add {link} type dummy   (this line and the next once: `ip link show {link}`)",
        f"  sudo ip address add {_LINK_ADDRESS} dev {link}   (resolved ignores a link without an address)",
        f"  sudo ip link set {link} up",
        f"  sudo resolvectl dns {link} 127.0.0.1   (the link's DNS server: the local dnsmasq)",
        f"  sudo resolvectl domain {link} {quoted}   (routing-only domains: these, and only these, go there)",
        f"  sudo resolvectl default-route {link} false   (no other name is ever sent there)",
        f"Or, kept across reboots, with systemd-networkd: /etc/systemd/network/{link}.netdev",
        "  [NetDev]",
        f"  Name={link}",
        "  Kind=dummy",
        f"and /etc/systemd/network/{link}.network",
        "  [Match]",
        f"  Name={link}",
        "  [Network]",
        f"  Address={_LINK_ADDRESS}",
        "  DNS=127.0.0.1",
        f"  Domains={' '.join(f'~{domain}' for domain in domains)}",
        "  DNSDefaultRoute=no",
        "then: sudo systemctl restart systemd-networkd",
    )


def resolved_undo_steps(remaining: list[str]) -> tuple[str, ...]:
    """After devmesh's dnsmasq snippets for some domains go: what undoes the link set up for them."""
    if remaining:
        quoted = " ".join(shlex.quote(f"~{domain}") for domain in remaining)
        return (
            f"If you set up the {RESOLVED_LINK} link for systemd-resolved, leave it only the domains "
            f"devmesh still serves: sudo resolvectl domain {RESOLVED_LINK} {quoted} (and the same "
            f"Domains= in {RESOLVED_LINK}.network if you made it)",
        )
    return (
        f"If you set up the {RESOLVED_LINK} link for systemd-resolved: sudo ip link delete {RESOLVED_LINK} "
        f"(and delete /etc/systemd/network/{RESOLVED_LINK}.netdev and .network if you made them)",
    )


def snippet_domains(
    folder: Path | None, *, skip_mesh: str | None = None, skip: Collection[Path] = ()
) -> list[str]:
    """The domains devmesh's dnsmasq snippets in `folder` answer for (other meshes' too)."""
    domains: set[str] = set()
    if folder is None or not folder.is_dir():
        return []
    for entry in sorted(folder.iterdir()):
        if entry in skip or not entry.is_file() or not _is_ours(entry, None):
            continue
        if skip_mesh is not None and _is_ours(entry, skip_mesh):
            continue
        try:
            text = entry.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        domains.update(match.group(1) for match in _ADDRESS_LINE.finditer(text))
    return sorted(domains)


def takes_effect(path: Path, *, platform: str, env: Mapping[str, str] | None = None) -> str:
    """The command that makes writing or deleting a devmesh file at `path` take effect ("" if none)."""
    env = os.environ if env is None else env
    if path.parent == dnsmasq_dir(platform, env):
        return _restart_dnsmasq(platform)
    if platform != "darwin" and path.parent == resolved_dir(env):
        return "sudo systemctl restart systemd-resolved"
    return ""


def _restart_dnsmasq(platform: str) -> str:
    return "sudo brew services restart dnsmasq" if platform == "darwin" else "sudo systemctl restart dnsmasq"


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


def owner_of(first_line: str) -> str | None:
    """The mesh a devmesh file's first line names (None: not a file devmesh wrote)."""
    match = _OWNER_LINE.match(first_line.rstrip("\r\n"))
    return match.group("mesh") if match else None


def recorded_project(text: str) -> str:
    """The project folder a devmesh file records on its second line ("" when none)."""
    lines = text.split("\n", 2)
    if len(lines) > 1 and lines[1].startswith("# project: "):
        return lines[1].removeprefix("# project: ").rstrip("\r")
    return ""


def _is_ours(path: Path, mesh: str | None) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline().rstrip("\n")
    except OSError:
        return False
    if mesh is not None:
        return first == owner_line(mesh)
    return owner_of(first) is not None
