from __future__ import annotations

from devmesh.peers.signing import Verifier, mesh_hash, mesh_key, sign


def headers(signed: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in signed.items()}


def test_a_signed_request_passes_once() -> None:
    key = mesh_key("team", "s3cret")
    verifier = Verifier(key)
    signed = headers(sign(key, "GET", "/x", "alice", now=1000.0))
    assert verifier.check("GET", "/x", signed, now=1001.0).ok
    replay = verifier.check("GET", "/x", signed, now=1002.0)
    assert not replay.ok and "replay" in replay.reason
    assert verifier.refused == 1


def test_what_a_signature_covers() -> None:
    key = mesh_key("team", "s3cret")
    signed = headers(sign(key, "GET", "/x", "alice", now=1000.0))
    assert not Verifier(key).check("POST", "/x", signed, now=1000.0).ok
    assert not Verifier(key).check("GET", "/y", signed, now=1000.0).ok
    assert not Verifier(key).check("GET", "/x", {**signed, "x-devmesh-peer": "bob"}, now=1000.0).ok
    assert not Verifier(mesh_key("team", "other")).check("GET", "/x", signed, now=1000.0).ok
    assert not Verifier(mesh_key("other-team", "s3cret")).check("GET", "/x", signed, now=1000.0).ok
    old = Verifier(key).check("GET", "/x", signed, now=1000.0 + 31)
    assert not old.ok and "timestamp" in old.reason
    assert "not signed" in Verifier(key).check("GET", "/x", {}, now=1000.0).reason


def test_the_announced_hash_tells_meshes_apart_without_the_secret() -> None:
    assert mesh_hash("team", "a") == mesh_hash("team", "a")
    assert len({mesh_hash("team", "a"), mesh_hash("team", "b"), mesh_hash("other", "a")}) == 3
    assert "s3cret" not in mesh_hash("team", "s3cret") and len(mesh_hash("team", "s3cret")) == 16


def test_nonces_may_arrive_out_of_order_but_never_twice() -> None:
    key = mesh_key("team", "s3cret")
    verifier = Verifier(key)
    signed = [headers(sign(key, "GET", "/x", "alice", now=1000.0)) for _ in range(5)]
    for index in (4, 1, 3, 0, 2):  # five requests in flight on five connections, answered in any order
        assert verifier.check("GET", "/x", signed[index], now=1000.0).ok
    assert not any(verifier.check("GET", "/x", again, now=1000.0).ok for again in signed)


def test_a_nonce_below_the_window_is_refused() -> None:
    from devmesh.peers.signing import REPLAY_SLOTS

    key = mesh_key("team", "s3cret")
    verifier = Verifier(key)
    first = headers(sign(key, "GET", "/x", "alice", now=1000.0))
    for _ in range(REPLAY_SLOTS):
        sign(key, "GET", "/x", "alice", now=1000.0)  # requests sent elsewhere: the counter moves on
    latest = headers(sign(key, "GET", "/x", "alice", now=1000.0))
    assert verifier.check("GET", "/x", latest, now=1000.0).ok
    assert not verifier.check("GET", "/x", first, now=1000.0).ok
