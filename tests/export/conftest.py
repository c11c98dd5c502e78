"""A route model shared by the renderers' tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from devmesh.config.loader import load_config
from devmesh.export.model import RouteModel, from_config

CONFIG = """
[mesh]
name = "shop"
[proxy]
timeout = "12s"
retries = 2
[services.api]
port = 3000
hosts = ["api", "*.tenant"]
routes = ["/api/*"]
lb = "least_conn"
health = { http = "/health", interval = "3s", unhealthy_after = 4 }
remote = "https://api.staging.example:8443"
[services.web]
command = "npm run dev"
routes = ["/"]
[services.docs]
port = 3001
routes = ["/docs"]
[services.pay]
remote = "http://127.0.0.1:4000"
"""


@pytest.fixture
def model(tmp_path: Path) -> RouteModel:
    path = tmp_path / "devmesh.toml"
    path.write_text(CONFIG, encoding="utf-8")
    loaded = load_config(path)
    return from_config(loaded.config, mesh_name=loaded.mesh_name)
