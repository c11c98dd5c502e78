"""Which names the CA signs: everything else a client sends in SNI is refused before any signing."""

from __future__ import annotations

import pytest

from devmesh.tls.names import cache_key, certificate_names, normalise_name, sibling_wildcard


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("localhost", "localhost"),
        ("API.Localhost.", "api.localhost"),
        ("x.tenant.localhost", "x.tenant.localhost"),
        ("my_db.localhost", "my_db.localhost"),
        ("xn--bcher-kva.localhost", "xn--bcher-kva.localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
    ],
)
def test_valid_names_are_normalised(name: str, expected: str) -> None:
    assert normalise_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "bad name.localhost",
        "bad!name.localhost",
        "-api.localhost",
        "api-.localhost",
        "a..b",
        ".localhost",
        "a" * 64 + ".localhost",
        ".".join(["a" * 60] * 5),  # > 253 characters
        "1.2.3",  # an IP address that is not one
        "fe80::1%eth0",
        "*.tenant.localhost",  # wildcards only when the caller asks for them
        "api.localhost\x00.evil.com",
        "é.localhost",  # U-labels must arrive as A-labels (xn--)
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    assert normalise_name(name) is None


def test_wildcards_only_when_allowed_and_never_on_one_label() -> None:
    assert normalise_name("*.tenant.localhost", allow_wildcard=True) == "*.tenant.localhost"
    assert normalise_name("*.localhost", allow_wildcard=True) is None
    assert normalise_name("a.*.localhost", allow_wildcard=True) is None
    assert normalise_name("*x.tenant.localhost", allow_wildcard=True) is None


def test_names_of_three_labels_share_a_sibling_wildcard() -> None:
    assert sibling_wildcard("x.tenant.localhost") == "*.tenant.localhost"
    assert sibling_wildcard("api.localhost") is None
    assert sibling_wildcard("localhost") is None
    assert sibling_wildcard("10.0.0.1") is None
    assert certificate_names("x.tenant.localhost") == ["x.tenant.localhost", "*.tenant.localhost"]
    assert certificate_names("api.localhost") == ["api.localhost"]
    assert cache_key("x.tenant.localhost") == cache_key("y.tenant.localhost") == "*.tenant.localhost"
    assert cache_key("api.localhost") == "api.localhost"
