"""Two hub replicas on one real PostgreSQL: an agent on either one gets what was applied through the
other, and the peers it is told about span both replicas (LISTEN/NOTIFY fan-out)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from engines.postgres import PostgresServer, postgres_server
from hub.kit import WORKSPACE, HubProcess, api, bootstrap, login, new_agent
from support import wait_for

__all__ = ["postgres_server"]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]


async def test_two_replicas_share_revisions_and_peers(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.new_database()
    bootstrap(url, tmp_path)
    one, two = HubProcess(url, tmp_path).start(), HubProcess(url, tmp_path).start()
    try:
        token_one = login(one.base)
        token_two = login(two.base)  # the same JWT secret: either replica accepts the other's token
        assert api(two.base, "GET", "/hub/v1/me", token=token_one)[0] == 200
        alice = await new_agent(one, token_one, "alice", catalog={"services": [], "mesh": "10.0.0.1:7090"})
        bob = await new_agent(two, token_two, "bob", catalog={"services": [], "mesh": "10.0.0.2:7090"})
        await alice.connect()
        await bob.connect()
        # alice (on replica one) learns of bob (on replica two) and of his catalog changes.
        await alice.wait_for("peers", where=lambda m: [p["name"] for p in m["peers"]] == ["bob"])
        catalog = {
            "services": [{"name": "api", "version": "3", "healthy": True, "hosts": ["api"]}],
            "mesh": "10.0.0.2:7090",
        }
        await bob.send("catalog", catalog=catalog)
        seen = await alice.wait_for(
            "peers", where=lambda m: bool(m["peers"]) and m["peers"][0]["catalog"] == catalog
        )
        assert seen["peers"][0]["mesh"] == "10.0.0.2:7090"

        # Applied through replica one, pushed by replica two to bob (and by one to alice).
        document = {"faults": {"slow": {"service": "api", "latency": "200ms"}}}
        code, applied = api(
            one.base, "POST", f"/hub/v1/workspaces/{WORKSPACE}/revisions", {"document": document}, token_one
        )
        assert code == 201
        for agent in (alice, bob):
            pushed = await agent.wait_for("revision", where=lambda m: m["revision"] == applied["revision"])
            assert pushed["document"] == document

        def both_applied() -> bool:
            found = api(two.base, "GET", f"/hub/v1/workspaces/{WORKSPACE}/revisions", token=token_two)[1]
            return {a["name"]: a["status"] for a in found[0]["agents"]} == {
                "alice": "applied",
                "bob": "applied",
            }

        wait_for(both_applied, timeout=15, what="both agents applied, as seen by replica two")

        # Replica two dies: bob leaves alice's peers once his session is known closed or stale.
        await bob.close()
        await alice.wait_for("peers", where=lambda m: m["peers"] == [])
        two.stop(signal.SIGKILL)
        bob.url = one.ws_url
        welcome = await bob.connect()
        assert welcome["revision"] == applied["revision"]
        await alice.wait_for("peers", where=lambda m: [p["name"] for p in m["peers"]] == ["bob"])
        await alice.close()
        await bob.close()
    finally:
        one.stop()
        two.stop()
