"""Which names a project needs: built like the route table builds its host names."""

from __future__ import annotations

from devmesh.config import load_config
from devmesh.names.plan import mark_name, names_for, names_from_config, needs_no_setup
from support import Project


def test_hosts_are_completed_with_the_domain_and_the_root_host_comes_first() -> None:
    names = names_for(
        "shop",
        "Shop.Test.",
        {"api": ["api", "api-v1"], "web": ["www.shop.test"], "root": ["shop.test"], "tenants": ["*.tenant"]},
    )
    assert names.domain == "shop.test"
    assert names.plain == ("shop.test", "api-v1.shop.test", "api.shop.test", "www.shop.test")
    assert names.wildcards == ("*.tenant.shop.test",)
    assert names.addresses == ("127.0.0.1",)
    assert names.needs_setup


def test_localhost_and_names_under_it_need_nothing() -> None:
    assert needs_no_setup("localhost")
    assert needs_no_setup("shop.localhost")
    assert needs_no_setup("LOCALHOST.")
    assert not needs_no_setup("localhost.test")
    assert not needs_no_setup("shoplocalhost")


def test_a_mesh_name_from_a_folder_is_made_safe_for_markers() -> None:
    assert mark_name("my shop/v2") == "my-shop-v2"
    assert mark_name("shop") == "shop"
    assert mark_name("  ") == "project"


def test_from_a_config_every_service_counts_and_ipv6_follows_the_proxy(project: Project) -> None:
    project.write(
        """
[mesh]
domain = "shop.test"
[proxy]
listen = "[::1]:7080"
[services.api]
port = 3001
[services.web]
port = 3002
hosts = ["web", "*.tenant"]
routes = ["/web"]
[services.billing]
remote = "https://billing.example"
"""
    )
    names = names_from_config(load_config(project.root / "devmesh.toml"))

    assert names.mesh == "project"  # the folder's name, as the agent uses it
    assert names.plain == ("shop.test", "api.shop.test", "billing.shop.test", "web.shop.test")
    assert names.wildcards == ("*.tenant.shop.test",)
    assert names.addresses == ("127.0.0.1", "::1")


def test_a_proxy_on_ipv4_only_gets_no_ipv6_line(project: Project) -> None:
    project.write('[mesh]\nname = "shop"\ndomain = "shop.test"\n[services.api]\nport = 3001\n')
    names = names_from_config(load_config(project.root / "devmesh.toml"))
    assert names.mesh == "shop"
    assert names.addresses == ("127.0.0.1",)
