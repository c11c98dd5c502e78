"""Mutual TLS on the mesh port (`[proxy] mesh_tls = {cert, key, ca}`): every agent of the team has a
certificate from the team's CA; each side of an agent-to-agent connection proves itself with it.

Peers are reached by address (found by mDNS or listed in [peers] static), so the chain is checked
against the team CA but the certificate's names are not matched to the address: holding a certificate
of the team CA is what makes an agent a member.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from devmesh.config.schema import MeshTLS


class MeshTLSError(Exception):
    """The mesh_tls files cannot be used; the message names the file and the key."""


def mesh_contexts(project_dir: Path, settings: MeshTLS) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for the mesh port, client context for connections to peers)."""
    cert, key, ca = (project_dir / settings.cert, project_dir / settings.key, project_dir / settings.ca)
    for path, name in ((cert, "cert"), (key, "key"), (ca, "ca")):
        if not path.is_file():
            raise MeshTLSError(f"[proxy] mesh_tls.{name}: {path} does not exist")
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert, key)
        server.load_verify_locations(cafile=ca)
        server.verify_mode = ssl.CERT_REQUIRED
        server.set_alpn_protocols(["http/1.1"])
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        client.load_cert_chain(cert, key)
        client.check_hostname = False  # peers are reached by address; membership is the team CA's chain
        client.verify_mode = ssl.CERT_REQUIRED
        client.set_alpn_protocols(["http/1.1"])
    except (ssl.SSLError, OSError) as error:
        raise MeshTLSError(f"[proxy] mesh_tls: {error}") from None
    return server, client
