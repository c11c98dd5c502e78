"""A peer's catalog as the agent reads it: services whose names are not service names are left out."""

from __future__ import annotations

import json
import logging

import pytest

from devmesh.peers.catalog import Catalog, OfferedService


def _catalog(*names: str) -> bytes:
    services = [{"name": name, "version": "1.0", "healthy": True} for name in names]
    return json.dumps(
        {"peer": "alice-1", "mesh": "m", "epoch": 1.0, "revision": 3, "services": services}
    ).encode()


def test_a_catalog_round_trips() -> None:
    catalog = Catalog("alice-1", "m", 1.0, 3, [OfferedService("api", "1.0", True)])
    assert Catalog.from_json(catalog.to_json()) == catalog


def test_names_that_are_not_service_names_are_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    evil = "api { } server { listen 9; location / { alias /etc/; } } upstream x"
    with caplog.at_level(logging.WARNING, logger="devmesh.peers.catalog"):
        catalog = Catalog.from_json(_catalog("api", evil, "Web", "a;b", "", "pay-2"))
    assert [service.name for service in catalog.services] == ["api", "pay-2"]
    logged = caplog.text
    assert "alice-1" in logged and repr(evil) in logged and "'a;b'" in logged and "'Web'" in logged


def test_what_is_not_a_catalog_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a devmesh catalog"):
        Catalog.from_json(b'{"peer": "a"}')
