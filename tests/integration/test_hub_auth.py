"""Every operation of the hub's OpenAPI refuses a request without valid credentials (401), and a
viewer's API key every write (403)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.kit import ADMIN, WORKSPACE, HubProcess, api, cli, login, running_hub
from support import wait_for

VALUES = {"workspace": WORKSPACE, "agent_id": "0" * 32, "token_id": "1", "key_id": "1"}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with running_hub(tmp_path) as process:
        yield process


def operations(base: str) -> list[tuple[str, str]]:
    code, spec = api(base, "GET", "/hub/openapi.json")
    assert code == 200
    found = [
        (method.upper(), re.sub(r"\{(\w+)\}", lambda m: VALUES[m.group(1)], path))
        for path, item in spec["paths"].items()
        for method in item
    ]
    assert len(found) >= 14, found  # the walk reaches the whole API, not an empty schema
    return found


def test_every_operation_refuses_without_credentials(hub: HubProcess) -> None:
    for method, path in operations(hub.base):
        for token in (None, "not-a-jwt", "dmk_unknown-key", login(hub.base)[:-4] + "AAAA"):
            code, answer = api(hub.base, method, path, {} if method in ("POST", "PUT") else None, token)
            assert code == 401, (method, path, token, code, answer)


def test_a_viewer_cannot_write_and_an_outsider_sees_nothing(hub: HubProcess) -> None:
    admin = login(hub.base)
    code, viewer = api(
        hub.base, "POST", f"/hub/v1/workspaces/{WORKSPACE}/keys", {"name": "ro", "role": "viewer"}, admin
    )
    assert code == 201 and viewer["key"].startswith("dmk_")
    code, _ = api(
        hub.base,
        "POST",
        f"/hub/v1/workspaces/{WORKSPACE}/members",
        {"username": "eve", "role": "viewer", "password": "eve-password"},
        admin,
    )
    assert code == 201
    for method, path in operations(hub.base):
        if path in ("/hub/v1/login", "/hub/v1/enroll"):
            continue
        code, answer = api(hub.base, method, path, {} if method == "POST" else None, viewer["key"])
        if method == "GET" and not path.endswith(("/keys", "/enrollment-tokens")):
            assert code == 200, (method, path, code, answer)
        else:
            assert code == 403, (method, path, code, answer)
    # A user of another workspace is refused in this one.
    done = api(
        hub.base,
        "GET",
        f"/hub/v1/workspaces/{WORKSPACE}/agents",
        token=login(hub.base, "eve", "eve-password"),
    )
    assert done[0] == 200
    api(hub.base, "DELETE", f"/hub/v1/workspaces/{WORKSPACE}/keys/{viewer['id']}", token=admin)
    wait_for(
        lambda: api(hub.base, "GET", "/hub/v1/me", token=viewer["key"])[0] == 401, what="revoked key refused"
    )
    audit = api(hub.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/audit", token=admin)[1]
    assert [e["action"] for e in audit][:3] == ["key.revoke", "member.set", "user.create"]


def test_an_admin_of_one_workspace_cannot_take_over_a_user_of_another(hub: HubProcess) -> None:
    # mallory is admin of her own workspace "other" only (as an operator would set up on the database).
    done = cli(
        "hub", "user", "add", "mallory", "--workspace", "other", "--role", "admin", "--password-stdin",
        "--db", hub.db_url, cwd=hub.cwd, stdin="mallory-password\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    mallory = login(hub.base, "mallory", "mallory-password")
    code, key = api(
        hub.base, "POST", "/hub/v1/workspaces/other/keys", {"name": "k", "role": "admin"}, mallory
    )
    assert code == 201
    for credential in (mallory, key["key"]):
        code, answer = api(
            hub.base,
            "POST",
            "/hub/v1/workspaces/other/members",
            {"username": ADMIN, "role": "viewer", "password": "taken-over-1"},
            credential,
        )
        assert code == 409 and "exists already" in answer["detail"], answer
    code, _ = api(hub.base, "POST", "/hub/v1/login", {"username": ADMIN, "password": "taken-over-1"})
    assert code == 401
    login(hub.base)  # the admin of "team" keeps their password
    # Adding an existing user without a password is what the API is for.
    code, answer = api(
        hub.base, "POST", "/hub/v1/workspaces/other/members", {"username": ADMIN, "role": "viewer"}, mallory
    )
    assert code == 201 and answer["created"] is False
    assert "member.set" in [
        e["action"] for e in api(hub.base, "GET", "/hub/v1/workspaces/other/audit", token=mallory)[1]
    ]
