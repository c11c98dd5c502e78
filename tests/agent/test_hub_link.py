"""The hub link without a hub: its state files, its backoff, enrollment failures, and what it does with
a revision or a peers list (a fake agent; the real one is in tests/integration/test_hub_agent.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devmesh.agent.hub_link import HUB_RECONNECT_MAX_S, HubLink, HubOptions, reconnect_delay
from devmesh.agent.hub_state import (
    HubCredential,
    HubUnreachable,
    SavedRevision,
    StateFileError,
    enroll,
    read_credential,
    read_saved_revision,
    revision_file,
    write_credential,
    write_saved_revision,
)
from devmesh.agent.paths import StatePaths
from devmesh.config import LoadedConfig, load_config
from devmesh.config.revision import revision_hash
from devmesh.config.units import Address, parse_address
from devmesh.faults.book import FaultBook
from devmesh.supervisor.logs import LogSink
from support import free_port

CREDENTIAL = HubCredential("http://hub.example:7000", "agt_1", "team", "s3cret-credential")


def test_the_credential_is_kept_private_and_for_its_hub_only(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    old = os.umask(0o022)
    try:
        write_credential(paths, CREDENTIAL)
    finally:
        os.umask(old)
    file = tmp_path / ".devmesh" / "hub.json"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert read_credential(paths, "http://hub.example:7000/") == CREDENTIAL
    assert read_credential(paths, "http://other.example:7000") is None
    file.chmod(0o644)  # loosened by hand: the next write makes it private again
    write_credential(paths, CREDENTIAL)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert not [p for p in file.parent.iterdir() if p.name.startswith(".hub")]  # no temporary left


def test_a_broken_state_file_is_an_error_that_names_it(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    paths.ensure()
    (paths.root / "hub.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(StateFileError, match=r"hub\.json: not valid JSON"):
        read_credential(paths, CREDENTIAL.hub)
    (paths.root / "hub.json").write_text('{"hub": "x"}', encoding="utf-8")
    with pytest.raises(StateFileError, match="not a hub credential"):
        read_credential(paths, CREDENTIAL.hub)


def test_the_saved_revision_is_checked_against_its_hash(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    assert read_saved_revision(paths) is None
    document = {"faults": {"f": {"service": "api", "abort": 503}}}
    write_saved_revision(paths, SavedRevision(revision_hash(document), document))
    assert read_saved_revision(paths) == SavedRevision(revision_hash(document), document)
    assert stat.S_IMODE(revision_file(paths).stat().st_mode) == 0o600
    tampered = json.loads(revision_file(paths).read_text())
    tampered["document"]["faults"]["f"]["abort"] = 500
    revision_file(paths).write_text(json.dumps(tampered), encoding="utf-8")
    with pytest.raises(StateFileError, match="does not match its hash"):
        read_saved_revision(paths)


def test_the_backoff_doubles_from_half_a_second_to_thirty_with_jitter() -> None:
    lowest = [reconnect_delay(attempt, rand=lambda: 0.0) for attempt in range(12)]
    highest = [reconnect_delay(attempt, rand=lambda: 0.999999) for attempt in range(12)]
    assert lowest[0] == 0.5 and highest[0] == pytest.approx(0.5)
    assert highest[1] == pytest.approx(1.0) and highest[2] == pytest.approx(2.0)
    assert max(highest) == pytest.approx(HUB_RECONNECT_MAX_S) and highest[-1] == pytest.approx(30.0)
    assert lowest[-1] == 15.0  # even the shortest wait keeps half the step
    assert all(low <= high for low, high in zip(lowest, highest, strict=True))
    assert reconnect_delay(10_000) <= HUB_RECONNECT_MAX_S


def test_enrolling_with_no_hub_there_is_unreachable_not_refused() -> None:
    with pytest.raises(HubUnreachable):
        enroll(f"http://127.0.0.1:{free_port()}", "tok", name="n", hostname="h", version="0", timeout_s=2)


# -- the link with a fake agent ---------------------------------------------------------------------------


class FakeFollower:
    def __init__(self) -> None:
        self.followed: list[str] = []
        self.removed: list[str] = []

    def add(self, address: Address) -> None:
        self.followed.append(str(address))

    def remove(self, address: Address, reason: str) -> None:
        self.removed.append(str(address))


class FakeAgent:
    """What the link uses of an Agent; `reload` goes through the link's `load_config`, as the Agent's
    seam does."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.faults = FaultBook(on_change=lambda event, details: None)
        self.supervisor: Any = None
        self.peers: Any = FakeFollower()
        self.mesh_address: Address | None = None
        self.config_error: str | None = None
        self.link: HubLink | None = None
        self.reloads = 0
        self.settles = 0
        self.dataplane_refusal: str | None = None  # what the data plane says of the next table
        self.dataplane_error: Exception | None = None  # what the next settle raises
        self.reload_error: Exception | None = None  # what the next reload raises
        self.seen_while_settling: list[tuple[str | None, str | None]] = []  # (applied, current)

    def offers(self, name: str) -> bool:
        return False

    async def settle_dataplane(self) -> str | None:
        assert self.link is not None
        self.settles += 1
        applied, current = self.link.applied, self.link.current
        self.seen_while_settling.append(
            (applied.revision if applied else None, current.revision if current else None)
        )
        error, self.dataplane_error = self.dataplane_error, None
        if error is not None:
            raise error
        return self.dataplane_refusal

    async def reload(self, logs: LogSink) -> None:
        assert self.link is not None
        self.reloads += 1
        error, self.reload_error = self.reload_error, None
        if error is not None:
            raise error
        self.loaded = self.link.load_config()
        self.faults.load(self.loaded.config)


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[LogSink]:
    sink = LogSink(tmp_path / "logs", terminal=io.StringIO())
    yield sink
    sink.close()


def make_link(tmp_path: Path, logs: LogSink, static: str = "") -> tuple[HubLink, FakeAgent]:
    config = tmp_path / "devmesh.toml"
    config.write_text(
        f"[peers]\nstatic = [{static}]\n[services.api]\nport = {free_port()}\n",
        encoding="utf-8",
    )
    agent = FakeAgent(load_config(config))
    link = HubLink(agent, HubOptions("http://hub.example"), logs, credential=CREDENTIAL, applied=None)
    agent.link = link
    return link, agent


async def test_a_valid_revision_is_applied_and_saved(tmp_path: Path, logs: LogSink) -> None:
    link, agent = make_link(tmp_path, logs)
    document = {"faults": {"teapot": {"service": "api", "abort": 418}}}
    status = await link._apply({"revision": revision_hash(document), "document": document})
    assert status == {"revision": revision_hash(document), "status": "applied", "details": None}
    assert agent.reloads == 1 and "teapot" in agent.loaded.config.faults
    assert read_saved_revision(StatePaths(tmp_path)) == SavedRevision(revision_hash(document), document)
    # The same revision again (after a reconnect): applied, without another reload.
    assert (await link._apply({"revision": revision_hash(document), "document": document}) or {})[
        "status"
    ] == "applied"
    assert agent.reloads == 1


async def test_a_revision_the_data_plane_refuses_is_rejected_and_the_previous_one_reloaded(
    tmp_path: Path, logs: LogSink
) -> None:
    link, agent = make_link(tmp_path, logs)
    good = {"faults": {"teapot": {"service": "api", "abort": 418}}}
    assert (await link._apply({"revision": revision_hash(good), "document": good}) or {})[
        "status"
    ] == "applied"
    agent.dataplane_refusal = "nginx: [emerg] host not found in upstream"
    bad = {"faults": {"coffee": {"service": "api", "abort": 503}}}
    status = await link._apply({"revision": revision_hash(bad), "document": bad})
    assert status is not None and status["status"] == "rejected"
    assert status["details"] == "the data plane refused it: nginx: [emerg] host not found in upstream"
    # Loaded with the bad revision, then back to the good one: the running config is the good one.
    assert agent.reloads == 3 and "teapot" in agent.loaded.config.faults
    assert "coffee" not in agent.loaded.config.faults
    assert link.applied == SavedRevision(revision_hash(good), good)
    assert read_saved_revision(StatePaths(tmp_path)) == SavedRevision(revision_hash(good), good)


async def test_an_invalid_revision_is_rejected_and_nothing_changes(tmp_path: Path, logs: LogSink) -> None:
    link, agent = make_link(tmp_path, logs)
    before = agent.loaded
    document = {"faults": {"teapot": {"service": "nope", "abort": 418}}}
    status = await link._apply({"revision": revision_hash(document), "document": document})
    assert status is not None and status["status"] == "rejected"
    assert status["details"].startswith(".devmesh/hub-revision.json: faults.teapot.service: ")
    assert "'nope'" in status["details"]
    assert agent.reloads == 0 and agent.loaded is before and link.applied is None
    assert read_saved_revision(StatePaths(tmp_path)) is None


async def test_a_document_that_does_not_match_its_hash_is_rejected(tmp_path: Path, logs: LogSink) -> None:
    link, agent = make_link(tmp_path, logs)
    status = await link._apply({"revision": "0" * 64, "document": {"faults": {}}})
    assert status is not None and status["status"] == "rejected" and "hash" in status["details"]
    assert await link._apply({"document": {}}) is None  # no hash: nothing to answer to
    assert agent.reloads == 0


async def test_peers_listed_by_the_hub_are_followed_and_unfollowed(tmp_path: Path, logs: LogSink) -> None:
    link, agent = make_link(tmp_path, logs, static='"127.0.0.1:7001"')
    follower: FakeFollower = agent.peers
    link._follow(
        [
            {"agent_id": "a", "mesh": "127.0.0.1:7001", "catalog": {}},
            {"agent_id": "b", "mesh": "10.0.0.2:7090", "catalog": {}},
            {"agent_id": "c", "mesh": None, "catalog": {}},
            {"agent_id": "d", "mesh": "not an address", "catalog": {}},
        ]
    )
    assert sorted(follower.followed) == ["10.0.0.2:7090", "127.0.0.1:7001"]
    link._follow([])
    assert follower.removed == ["10.0.0.2:7090"]  # the static address stays followed
    assert link.status()["peers"] == 0
    assert str(parse_address("10.0.0.2:7090")) == "10.0.0.2:7090"


def _message(document: dict[str, Any]) -> dict[str, Any]:
    return {"type": "revision", "revision": revision_hash(document), "document": document}


GOOD = {"faults": {"teapot": {"service": "api", "abort": 418}}}
NEXT = {"faults": {"coffee": {"service": "api", "abort": 503}}}


async def test_a_revision_is_applied_only_once_the_data_plane_serves_it(
    tmp_path: Path, logs: LogSink
) -> None:
    link, agent = make_link(tmp_path, logs)
    assert (await link._apply(_message(GOOD)) or {})["status"] == "applied"
    assert (await link._apply(_message(NEXT)) or {})["status"] == "applied"
    # While nginx was being settled, heartbeats and `status` still said the revision in force before.
    assert agent.seen_while_settling == [
        (None, revision_hash(GOOD)),
        (revision_hash(GOOD), revision_hash(NEXT)),
    ]
    assert link.applied == SavedRevision(revision_hash(NEXT), NEXT) and link.current == link.applied


@pytest.mark.parametrize(
    ("fail", "said"),
    [
        ("settle", "applying it failed: EngineError: nginx: cannot write nginx.conf: No space left"),
        ("reload", "applying it failed: RuntimeError: the supervisor fell over"),
        ("save", "applying it failed: OSError: [Errno 28] No space left on device"),
    ],
)
async def test_an_apply_that_raises_is_rejected_and_the_revision_in_force_restored(
    tmp_path: Path, logs: LogSink, monkeypatch: pytest.MonkeyPatch, fail: str, said: str
) -> None:
    from devmesh.agent import hub_link
    from devmesh.dataplane.results import EngineError

    link, agent = make_link(tmp_path, logs)
    assert (await link._apply(_message(GOOD)) or {})["status"] == "applied"
    if fail == "settle":
        agent.dataplane_error = EngineError("nginx: cannot write nginx.conf: No space left")
    elif fail == "reload":
        agent.reload_error = RuntimeError("the supervisor fell over")
    else:

        def full(paths: StatePaths, saved: SavedRevision) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(hub_link, "write_saved_revision", full)
    reloads, settles = agent.reloads, agent.settles
    status = await link._apply(_message(NEXT))
    assert status == {"revision": revision_hash(NEXT), "status": "rejected", "details": said}
    assert link.applied == SavedRevision(revision_hash(GOOD), GOOD) and link.current == link.applied
    # Back to the revision in force: reloaded with it, and the data plane settled on it again.
    assert agent.reloads == reloads + 2 and agent.settles > settles
    assert "teapot" in agent.loaded.config.faults and "coffee" not in agent.loaded.config.faults
    assert read_saved_revision(StatePaths(tmp_path)) == SavedRevision(revision_hash(GOOD), GOOD)


async def test_the_applier_goes_on_after_a_failed_apply(tmp_path: Path, logs: LogSink) -> None:
    from devmesh.dataplane.results import EngineError

    link, agent = make_link(tmp_path, logs)
    agent.dataplane_error = EngineError("nginx: gone")
    applier = asyncio.get_running_loop().create_task(link._apply_revisions())
    try:
        link._revisions.put_nowait(_message(NEXT))
        link._revisions.put_nowait(_message(GOOD))
        for _ in range(200):
            if revision_hash(GOOD) in link._outbox:
                break
            await asyncio.sleep(0.01)
        assert not applier.done()
        assert link._outbox[revision_hash(NEXT)]["status"] == "rejected"
        assert link._outbox[revision_hash(GOOD)]["status"] == "applied"
    finally:
        applier.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await applier


async def test_close_never_raises(tmp_path: Path, logs: LogSink) -> None:
    link, _ = make_link(tmp_path, logs)

    async def broken() -> None:
        raise RuntimeError("a task that died")

    loop = asyncio.get_running_loop()
    link._tasks = [loop.create_task(broken()), loop.create_task(asyncio.sleep(60))]
    await asyncio.sleep(0)
    await link.close()  # the agent's shutdown goes on after it
    assert link._tasks == [] and not link.connected
