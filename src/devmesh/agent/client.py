"""The CLI's side of the admin API: find the running agent of a project and call it (stdlib only, so
that `devmesh status` starts fast)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

from devmesh import const
from devmesh.agent.paths import AgentRecord, StatePaths, read_agent_record, read_token


class AgentNotRunning(Exception):
    """No agent runs for this project."""


class AdminError(Exception):
    """The agent answered with an error; `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AdminClient:
    record: AgentRecord
    token: str | None

    @classmethod
    def for_project(cls, paths: StatePaths) -> AdminClient:
        record = read_agent_record(paths)
        if record is None:
            raise AgentNotRunning(
                f"devmesh is not running in {paths.project_dir} (start it with `devmesh up`)"
            )
        return cls(record, read_token(paths))

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self._request("DELETE", path)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        host, _, port = self.record.admin.rpartition(":")
        connection = http.client.HTTPConnection(
            host.strip("[]"), int(port), timeout=const.ADMIN_REQUEST_TIMEOUT_S
        )
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except OSError as error:
            raise AgentNotRunning(
                f"the devmesh agent at {self.record.admin} does not answer: {error}"
            ) from None
        finally:
            connection.close()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if response.status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise AdminError(response.status, str(message or f"HTTP {response.status}"))
        return decoded
