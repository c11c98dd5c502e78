"""Server TLS contexts with a certificate per server name, issued on demand when a client asks (SNI).

Browsers refuse wildcards one label above a top-level name (`*.localhost`), so rather than one wildcard
certificate devmesh issues, for each name a client sends, a leaf for exactly that name (plus
`*.<parent>` when the name has three labels or more, so that `a.tenant.localhost` and
`b.tenant.localhost` share one). An EC P-256 leaf takes about a millisecond to make, so it is made
inside the handshake, on the event loop, and kept in a bounded LRU cache.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devmesh.tls.names import cache_key, certificate_names, normalise_name

if TYPE_CHECKING:
    from devmesh.tls.ca import LocalCA

logger = logging.getLogger(__name__)

ALPN_PROTOCOLS = ["http/1.1"]  # the data plane speaks HTTP/1.1 only (DESIGN §1)
# A leaf is replaced this long before it expires, so an agent that runs for a year keeps working.
RENEW_BEFORE = datetime.timedelta(days=1)


def new_server_context(certificate_chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context presenting this certificate: TLS 1.2 or newer, ALPN http/1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # After an SNI switch OpenSSL answers ALPN from the new context, so every context needs it.
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    # Python 3.11's ssl only loads certificates from files: the key lives for the few microseconds of
    # the load in a folder only this user can open (mkdtemp makes it 0700), in a file created 0600.
    with tempfile.TemporaryDirectory(prefix="devmesh-tls-") as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        for path, data in ((cert_file, certificate_chain_pem), (key_file, key_pem)):
            descriptor = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600
            )
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(cert_file, key_file)
    return context


@dataclass(frozen=True)
class _Entry:
    context: ssl.SSLContext
    renew_at: datetime.datetime


class SniContexts:
    """The default context (hand `.default` to the server) and the per-name contexts it switches to.

    `accept_name(name) -> bool`, when given, is asked about every valid name before a leaf is issued for
    it (e.g. to serve only the mesh's domain); refused and invalid names get the default leaf, which the
    client then rejects as not matching, instead of a certificate signed for whatever it sent.
    """

    def __init__(
        self,
        ca: LocalCA,
        default_names: Sequence[str],
        *,
        max_entries: int = 1024,
        accept_name: Callable[[str], bool] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ca = ca
        self.max_entries = max_entries
        self.accept_name = accept_name
        self.issued = 0  # leaves made for server names, for tests and metrics
        chain, key, _ = self._issue(default_names)
        self.default_names = frozenset(
            name for name in (normalise_name(n, allow_wildcard=True) for n in default_names) if name
        )
        self.default = new_server_context(chain, key)
        # The callback holds a reference to self, so the cache lives as long as the default context.
        self.default.sni_callback = self._on_server_name
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # Handshakes of a threaded server run callbacks concurrently; one on an event loop never waits.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def cached_keys(self) -> list[str]:
        """Cache keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """The context to present for `server_name`, or None to keep the default one (no name, an
        invalid name, a refused name, or a name the default leaf already covers)."""
        name = normalise_name(server_name)
        if name is None or name in self.default_names:
            return None
        if self.accept_name is not None and not self.accept_name(name):
            return None
        key = cache_key(name)
        with self._lock:
            entry = self._entries.get(key)
            now = datetime.datetime.now(datetime.UTC)
            if entry is not None and now < entry.renew_at:
                self._entries.move_to_end(key)
                return entry.context
            chain, key_pem, not_after = self._issue(certificate_names(name))
            entry = _Entry(new_server_context(chain, key_pem), not_after - RENEW_BEFORE)
            self.issued += 1
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return entry.context

    def _issue(self, names: Sequence[str]) -> tuple[bytes, bytes, datetime.datetime]:
        leaf, key_pem, not_after = self.ca.issue_leaf(names)
        return leaf + self.ca.certificate_pem, key_pem, not_after

    def _on_server_name(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        # Runs inside the handshake. An exception here would abort it with a bare "handshake failure",
        # so any problem is logged and the default certificate presented instead.
        if server_name is None:
            return
        try:
            chosen = self.context_for(server_name)
            if chosen is not None:
                ssl_object.context = chosen
        except Exception:
            logger.exception("could not issue a certificate for %r; presenting the default one", server_name)
