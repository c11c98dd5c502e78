"""What an agent keeps of its hub in `.devmesh/`: its credential (`hub.json`, from `enroll`) and the
last revision it applied (`hub-revision.json`).

Both are written atomically with mode 0600: the credential is this agent's password on the hub, and the
revision is what the agent serves with when it starts while the hub is down. A file that cannot be read
is treated as absent (and said so by the caller): the agent enrols again, or starts without a revision.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devmesh.agent.paths import StatePaths
from devmesh.config.revision import revision_hash
from devmesh.config.writeback import atomic_write_text

__all__ = [
    "HubCredential",
    "HubRefused",
    "HubUnreachable",
    "SavedRevision",
    "StateFileError",
    "credential_file",
    "enroll",
    "forget_credential",
    "normalize_hub_url",
    "read_credential",
    "read_saved_revision",
    "revision_file",
    "write_credential",
    "write_saved_revision",
]

HUB_ENROLL_TIMEOUT_S = 10.0  # the enrollment request, connect to answer
HUB_ANSWER_MAX_BYTES = 64 * 1024  # the enrollment answer
ENROLL_PATH = "/hub/v1/enroll"


class StateFileError(Exception):
    """A hub state file exists but is not what devmesh wrote (edited by hand, truncated)."""


@dataclass(frozen=True, slots=True)
class HubCredential:
    """This agent's identity on one hub, from its enrollment."""

    hub: str  # the hub's base URL, without a trailing "/"
    agent_id: str
    workspace: str
    credential: str


@dataclass(frozen=True, slots=True)
class SavedRevision:
    """The last revision this agent applied: its hash (as the hub names it) and its document."""

    revision: str
    document: dict[str, Any]


class HubRefused(Exception):
    """The hub answered, and said no (an enrollment token used, revoked or expired; a bad credential)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status
        self.detail = detail


class HubUnreachable(Exception):
    """No answer from the hub, or not one devmesh understands: worth trying again later."""


def enroll(
    url: str, token: str, *, name: str, hostname: str, version: str, timeout_s: float = HUB_ENROLL_TIMEOUT_S
) -> HubCredential:
    """`POST /hub/v1/enroll`: exchange the one-time `token` for this agent's credential (blocking).

    Raises:
        HubRefused: the hub said no (4xx), with its `detail`.
        HubUnreachable: no answer, a server error, or an answer that is not an enrollment.
    """
    body = json.dumps({"token": token, "name": name, "hostname": hostname, "version": version}).encode()
    request = urllib.request.Request(
        url + ENROLL_PATH,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, payload = response.status, response.read(HUB_ANSWER_MAX_BYTES)
    except urllib.error.HTTPError as error:
        detail = _detail(error.read(HUB_ANSWER_MAX_BYTES)) or error.reason
        error.close()
        if 400 <= error.code < 500:
            raise HubRefused(error.code, str(detail)) from None
        raise HubUnreachable(f"the hub answered {error.code}: {detail}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise HubUnreachable(text) from None
    except (OSError, TimeoutError) as error:
        raise HubUnreachable(str(error) or type(error).__name__) from None
    try:
        data = json.loads(payload)
        return HubCredential(
            hub=url,
            agent_id=str(data["agent_id"]),
            workspace=str(data["workspace"]),
            credential=str(data["credential"]),
        )
    except (ValueError, KeyError, TypeError):
        raise HubUnreachable(f"the answer to {ENROLL_PATH} ({status}) is not an enrollment") from None


def _detail(payload: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(payload).get("detail") or "")
    return payload[:200].decode("utf-8", "replace").strip()


def credential_file(paths: StatePaths) -> Path:
    return paths.root / "hub.json"


def revision_file(paths: StatePaths) -> Path:
    return paths.root / "hub-revision.json"


def normalize_hub_url(url: str) -> str:
    return url.strip().rstrip("/")


def read_credential(paths: StatePaths, hub: str) -> HubCredential | None:
    """The credential kept for `hub`; None when there is none (or it is for another hub).

    Raises:
        StateFileError: `hub.json` exists but is not a credential.
    """
    data = _read_json(credential_file(paths))
    if data is None:
        return None
    try:
        saved = HubCredential(
            hub=str(data["hub"]),
            agent_id=str(data["agent_id"]),
            workspace=str(data["workspace"]),
            credential=str(data["credential"]),
        )
    except (KeyError, TypeError) as error:
        raise StateFileError(f"{credential_file(paths)}: not a hub credential (missing {error})") from None
    return saved if normalize_hub_url(saved.hub) == normalize_hub_url(hub) else None


def write_credential(paths: StatePaths, credential: HubCredential) -> None:
    payload = {
        "hub": normalize_hub_url(credential.hub),
        "agent_id": credential.agent_id,
        "workspace": credential.workspace,
        "credential": credential.credential,
    }
    _write_private(credential_file(paths), json.dumps(payload, indent=2) + "\n")


def forget_credential(paths: StatePaths) -> None:
    """Drop the credential (the hub refused it): the next start with a token enrols again."""
    with contextlib.suppress(FileNotFoundError):
        credential_file(paths).unlink()


def read_saved_revision(paths: StatePaths) -> SavedRevision | None:
    """The last good revision, checked against its hash; None when none was saved.

    Raises:
        StateFileError: the file is not a saved revision, or its document does not match its hash.
    """
    data = _read_json(revision_file(paths))
    if data is None:
        return None
    revision, document = data.get("revision"), data.get("document")
    if not isinstance(revision, str) or not isinstance(document, dict):
        raise StateFileError(f"{revision_file(paths)}: not a saved revision (needs revision and document)")
    if revision_hash(document) != revision:
        raise StateFileError(f"{revision_file(paths)}: the document does not match its hash {revision[:12]}")
    return SavedRevision(revision, document)


def write_saved_revision(paths: StatePaths, saved: SavedRevision) -> None:
    payload = {"revision": saved.revision, "document": saved.document}
    _write_private(revision_file(paths), json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateFileError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise StateFileError(f"{path}: not valid JSON ({error}); delete it to start afresh") from None
    if not isinstance(data, dict):
        raise StateFileError(f"{path}: expected a JSON object; delete it to start afresh")
    return data


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600, whatever the umask (atomic_write_text keeps an existing mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
    else:
        os.close(descriptor)
    atomic_write_text(path, text)
