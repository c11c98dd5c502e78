"""Host matching of the middleware: exact names, wildcards, the domain, and bad `hosts=` keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devmesh.middleware.hosts import HostRouter, normalize_domain, normalize_host, subdomain_of


def app_named(name: str) -> object:
    def app() -> str:
        return name

    app.__name__ = name
    return app


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("API.localhost:8000", "api.localhost"),
        ("api.localhost.", "api.localhost"),
        ("[::1]:8000", "::1"),
        ("127.0.0.1:7080", "127.0.0.1"),
        ("", ""),
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


def test_exact_names_win_over_wildcards_and_the_longest_wildcard_wins() -> None:
    api, tenant, eu, anything = (app_named(n) for n in ("api", "tenant", "eu", "anything"))
    router = HostRouter(
        {"api": api, "*.tenant": tenant, "*.eu.tenant": eu, "*": anything, "special.tenant": api},
        domain="localhost",
    )
    assert router.match("api.localhost")[0] is api
    assert router.match("special.tenant.localhost")[0] is api
    app, match = router.match("acme.tenant.localhost")
    assert app is tenant
    assert (match.pattern, match.wildcard, match.subdomain) == ("*.tenant", "acme", "acme.tenant")
    app, match = router.match("shop.eu.tenant.localhost")
    assert (app, match.wildcard) == (eu, "shop")
    assert router.match("other.localhost")[0] is anything
    # The bare suffix is no match for its wildcard, and the domain itself matches nothing here.
    assert router.match("tenant.localhost")[0] is anything
    assert router.match("localhost")[0] is None


def test_patterns_in_full_and_another_domain() -> None:
    api = app_named("api")
    router = HostRouter({"api.dev.test": api, "admin": api}, domain="dev.test")
    assert router.match("api.dev.test")[0] is api
    assert router.match("admin.dev.test")[0] is api
    assert router.match("admin.localhost")[0] is None
    assert [mounted.full_name for mounted in router.mounted] == ["api.dev.test", "admin.dev.test"]
    assert router.apps() == [api]


def test_no_match_still_says_the_subdomain() -> None:
    app, match = HostRouter({}, domain="localhost").match("a.b.localhost")
    assert app is None
    assert match.as_dict() == {
        "host": "a.b.localhost",
        "domain": "localhost",
        "subdomain": "a.b",
        "pattern": None,
        "wildcard": None,
    }
    assert subdomain_of("example.com", "localhost") is None


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ({"api one": app_named("a")}, "'api one' is not a host name"),
        ({"api": "not an app"}, "hosts['api']"),
        ({"api": app_named("a"), "api.localhost": app_named("b")}, "both name api.localhost"),
        ({"*.t": app_named("a"), "*.T": app_named("b")}, "mounts the same names"),
    ],
)
def test_bad_hosts_are_named(hosts: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("*", r"\*")):
        HostRouter(hosts, domain="localhost")


def test_bad_domain_is_named() -> None:
    with pytest.raises(ValueError, match="domain: 'not a domain'"):
        normalize_domain("not a domain", source="domain")
    assert normalize_domain("Dev.Test.", source="domain") == "dev.test"


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(name=labels, tenant=labels, port=st.integers(1, 65535), upper=st.booleans())
def test_any_subdomain_of_a_wildcard_maps_back_to_its_host(
    name: str, tenant: str, port: int, upper: bool
) -> None:
    exact, wildcard = app_named("exact"), app_named("wildcard")
    router = HostRouter({"exact": exact, "*.tenant": wildcard}, domain="localhost")
    raw = f"{tenant}.{name}.tenant.localhost:{port}"
    host = normalize_host(raw.upper() if upper else raw)
    app, match = router.match(host)
    assert app is wildcard
    assert match.wildcard == f"{tenant}.{name}"
    assert f"{match.wildcard}.tenant.localhost" == host
    # An exact name never falls to a wildcard, and a host outside the domain never matches.
    assert router.match(normalize_host(f"EXACT.localhost:{port}"))[0] is exact
    assert router.match(f"{name}.tenant.example")[0] is None
