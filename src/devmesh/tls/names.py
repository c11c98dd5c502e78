"""Which names devmesh's CA will put in a certificate, and which names one certificate covers.

Pure functions, no cryptography: the SNI callback runs them on every new name a client sends, before
anything is signed, so that a client cannot make the CA sign arbitrary strings.
"""

from __future__ import annotations

import ipaddress
import re

# RFC 1035 labels, plus "_" which docker and compose service names use (valid in DNS, and OpenSSL's
# host name check accepts it). A-labels ("xn--...") pass as they are ASCII.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_MAX_NAME_LENGTH = 253


def normalise_name(name: str, *, allow_wildcard: bool = False) -> str | None:
    """`name` as it goes into a certificate (lower case, IPs in canonical form), or None when it is
    neither a DNS name nor an IP address.

    A wildcard (`*.tenant.localhost`) is only accepted when asked for, and only as the whole left-most
    label above at least two more labels: browsers reject `*.localhost`-style wildcards on one label.
    """
    candidate = name.strip()
    if not candidate:
        return None
    address = parse_ip(candidate)
    if address is not None:
        return address
    candidate = candidate.lower().removesuffix(".")
    if not candidate or len(candidate) > _MAX_NAME_LENGTH:
        return None
    labels = candidate.split(".")
    if labels[0] == "*":
        if not allow_wildcard or len(labels) < 3:
            return None
        labels = labels[1:]
    if not all(_LABEL.match(label) for label in labels):
        return None
    # A name of digits and dots only is an IP address that failed to parse (e.g. "1.2.3"), not a name.
    if all(label.isdigit() for label in labels):
        return None
    return candidate


def parse_ip(text: str) -> str | None:
    """The canonical text of an IP address (`[::1]` and `::1` give `::1`), or None."""
    stripped = text.strip().removeprefix("[").removesuffix("]")
    if "%" in stripped:  # a zone ("fe80::1%eth0") cannot go into a certificate
        return None
    try:
        return str(ipaddress.ip_address(stripped))
    except ValueError:
        return None


def sibling_wildcard(name: str) -> str | None:
    """`*.<parent>` for a name of three labels or more (`x.tenant.localhost` -> `*.tenant.localhost`), so
    that one certificate serves every sibling; None for IPs and shorter names, whose wildcard
    (`*.localhost`) browsers refuse."""
    if parse_ip(name) is not None:
        return None
    labels = name.split(".")
    if len(labels) < 3 or labels[0] == "*":
        return None
    return "*." + ".".join(labels[1:])


def certificate_names(name: str) -> list[str]:
    """The subject alternative names devmesh issues for a server name a client asked for."""
    wildcard = sibling_wildcard(name)
    return [name, wildcard] if wildcard else [name]


def cache_key(name: str) -> str:
    """The key under which the certificate for `name` is cached: siblings share their wildcard's."""
    return sibling_wildcard(name) or name
