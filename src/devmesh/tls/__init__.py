"""Local HTTPS: devmesh's certificate authority and the certificates it issues per server name.

Importing this package is cheap (the standard library only); `cryptography` is imported when a
certificate is first parsed or signed.
"""

from __future__ import annotations

from devmesh.tls.ca import CAError, LocalCA, ca_dir

__all__ = ["CAError", "LocalCA", "ca_dir"]
