"""The framework-independent parts of devmesh's ASGI and WSGI middleware.

Apps import `devmesh.asgi.DevmeshMiddleware` or `devmesh.wsgi.DevmeshWSGIMiddleware`; this package holds
what both share (host matching, the per-request plan, the health and routes documents, the rules for
X-Forwarded-*) and the two forwarders (asyncio for ASGI, http.client for WSGI). Standard library only.
"""

from __future__ import annotations

from devmesh.middleware.core import HEALTH_PATH, ROUTES_PATH, MeshAddress, MeshSettings
from devmesh.middleware.hosts import HostMatch, HostRouter
from devmesh.routing.table import normalize_host

__all__ = [
    "HEALTH_PATH",
    "ROUTES_PATH",
    "HostMatch",
    "HostRouter",
    "MeshAddress",
    "MeshSettings",
    "normalize_host",
]
