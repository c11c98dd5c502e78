"""The checks of `devmesh check`, in their order: config, ports, agent, health, smoke, versions.

`run_checks` runs them into a `Report`; the config, health and versions checks are here (health and
versions are pure: a status document in, testcases out), the two that probe the network have modules
of their own (`ports`, `smoke`), and starting and stopping an agent is `agents`'.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
from devmesh.agent.paths import StatePaths, read_agent_record, read_token
from devmesh.config import ConfigError, find_config, load_config
from devmesh.peers.versions import satisfies
from devmesh.preflight.agents import start_for_check, stop_for_check
from devmesh.preflight.ports import check_ports_answer, check_ports_free
from devmesh.preflight.readiness import WaitResult, declared, describe, served_elsewhere
from devmesh.preflight.report import ERROR, FAILED, SKIPPED, CheckResult, Report
from devmesh.preflight.smoke import check_smoke
from devmesh.preflight.wait import wait_for_mesh

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig


def run_checks(
    report: Report,
    *,
    config_file: Path | None,
    env_name: str | None,
    timeout_s: float,
    may_start: bool,
    progress: Callable[[str], None] | None = None,
) -> LoadedConfig | None:
    """Every check into `report`; returns the loaded config, or None when it is invalid (nothing else
    is checked then).

    Services may take until `timeout_s` after `report.started` to become healthy. With no agent
    running, one is started when `may_start` (and stopped at the end, whatever happens), else that is
    a failure. A check that breaks is an `error` testcase, never a lost report. `progress` gets a line
    to show while health is waited for.
    """
    deadline = report.started + timeout_s
    loaded = check_config(config_file, env_name, report)
    if loaded is None:
        return None
    started_pid: list[int] = []
    try:
        _check_mesh(loaded, deadline, timeout_s, may_start, report, started_pid, progress)
    except Exception as error:  # a bug in a check: reported as a JUnit error
        report.add(
            CheckResult(
                "devmesh.check",
                "internal",
                ERROR,
                message=f"check itself failed: {type(error).__name__}: {error}",
                details=traceback.format_exc(),
                hint="please report this at the devmesh issue tracker, with the details above",
            )
        )
    finally:
        if started_pid:
            stop_for_check(loaded, started_pid[0], report)
    return loaded


def _check_mesh(
    loaded: LoadedConfig,
    deadline: float,
    timeout_s: float,
    may_start: bool,
    report: Report,
    started_pid: list[int],
    progress: Callable[[str], None] | None,
) -> None:
    """Ports, agent, health, smoke and versions; the pid of an agent this run starts goes into
    `started_pid` at once, so that it is stopped even if a later check breaks."""
    paths = StatePaths(loaded.project_dir)
    services = list(loaded.config.services)
    record = read_agent_record(paths)
    if record is not None:
        try:
            status = AdminClient(record, read_token(paths)).get("/api/v1/status")
        except (AgentNotRunning, AdminError) as error:
            report.add(
                CheckResult(
                    "devmesh.ports",
                    f"admin {record.admin}",
                    FAILED,
                    message=f"the agent (pid {record.pid}) runs but its admin API does not answer: {error}",
                    hint="see .devmesh/agent.log; `devmesh down && devmesh up --detach` restarts it",
                )
            )
            skip_service_checks(services, "the agent does not answer (see devmesh.ports)", report)
            return
        check_ports_answer(status["agent"], report)
    elif not check_ports_free(loaded, report):
        skip_service_checks(services, "a port the agent needs is taken (see devmesh.ports)", report)
        return
    elif not may_start:
        report.add(
            CheckResult(
                "devmesh.agent",
                "running",
                FAILED,
                message=f"no devmesh agent runs for {loaded.project_dir}",
                hint="start it first (`devmesh up --detach`), or let check start it (drop --no-start)",
            )
        )
        skip_service_checks(services, "no agent runs (see devmesh.agent)", report)
        return
    else:
        pid = start_for_check(loaded, deadline, report)
        if pid is None:
            skip_service_checks(services, "the agent could not start (see devmesh.agent start)", report)
            return
        started_pid.append(pid)
    if progress is not None:
        progress(f"devmesh check: waiting up to {timeout_s:g}s for every service to be healthy")
    waited = wait_for_mesh(loaded.project_dir, healthy=True, timeout_s=max(deadline - time.monotonic(), 0.0))
    if waited.status is None:
        report.add(
            CheckResult(
                "devmesh.agent",
                "answers",
                FAILED,
                message="the agent stopped answering while check waited for health",
                hint="see .devmesh/agent.log",
            )
        )
        skip_service_checks(services, "the agent stopped answering", report)
        return
    entries = check_health(waited, timeout_s, report)
    for name in services:
        if name not in entries:
            report.add(
                CheckResult(
                    "devmesh.health",
                    name,
                    FAILED,
                    message=f"{name} is in {loaded.path.name} but not in the running mesh",
                    hint="the agent runs another config (see `devmesh status`): `devmesh down && devmesh up --detach`",
                )
            )
    unhealthy = set(waited.waiting)
    listen = (waited.status.get("agent") or {}).get("listen")
    check_smoke(loaded, entries, unhealthy, listen, report)
    check_versions(entries, unhealthy, report)


def check_config(config_file: Path | None, env_name: str | None, report: Report) -> LoadedConfig | None:
    """The `devmesh.config` testcase: the config (`config_file`, else found) loads; None when it does not."""
    began = time.monotonic()
    name = str(config_file or "devmesh.toml")
    try:
        path = find_config(explicit=config_file)
        name = path.name
        loaded = load_config(path, env_name=env_name)
    except ConfigError as error:
        report.add(
            CheckResult(
                "devmesh.config",
                name,
                FAILED,
                message=f"the config has {len(error.problems)} error(s): {error.problems[0]}",
                details="\n".join(str(problem) for problem in error.problems),
                hint="fix each key named above (file:line: key); `devmesh status` shows the same errors",
                time_s=time.monotonic() - began,
            )
        )
        return None
    files = ", ".join(str(file.relative_to(loaded.project_dir)) for file in loaded.files)
    report.add(
        CheckResult(
            "devmesh.config",
            name,
            message=f"valid: {files}; {len(loaded.config.services)} service(s)",
            note="\n".join(loaded.warnings),
            time_s=time.monotonic() - began,
        )
    )
    return loaded


def skip_service_checks(names: Iterable[str], why: str, report: Report) -> None:
    """A skipped `devmesh.health` testcase per service, when the mesh cannot be checked at all."""
    for name in names:
        report.add(CheckResult("devmesh.health", name, SKIPPED, message=f"not checked: {why}"))


def check_health(result: WaitResult, timeout_s: float, report: Report) -> dict[str, dict[str, Any]]:
    """A testcase per service of this project (its time: until it was healthy, or the whole wait,
    counted from the start of check); returns the services' last status entries, by name."""
    waited_from = report.elapsed() - result.elapsed
    assert result.status is not None
    entries = {entry["name"]: entry for entry in result.status["services"] if declared(entry)}
    for name, entry in entries.items():
        problem = result.waiting.get(name)
        case = CheckResult("devmesh.health", name)
        if problem is None:
            case.time_s = waited_from + result.ready_after.get(name, 0.0)
            case.message = (
                describe(entry) if not served_elsewhere(entry) else "served by a peer or its remote"
            )
        else:
            case.time_s = report.elapsed()
            case.outcome = FAILED
            case.message = f"{name} is not healthy after {timeout_s:g}s: {problem}"
            case.hint = (
                f"`devmesh logs {name}` for its output, `devmesh status` for the mesh; "
                "a slow start needs a longer --timeout"
            )
        report.add(case)
    return entries


def check_versions(entries: Mapping[str, Mapping[str, Any]], unhealthy: set[str], report: Report) -> None:
    """For each service with `requires`: the endpoint requests go to (the first healthy one, in the
    order the proxy tries them) has a version inside the range."""
    for name, entry in entries.items():
        requires = entry.get("requires")
        if not requires:
            continue
        case = report.add(CheckResult("devmesh.versions", name))
        used = next((endpoint for endpoint in entry.get("endpoints") or [] if endpoint.get("healthy")), None)
        if used is None:
            if name in unhealthy:
                case.outcome, case.message = (
                    SKIPPED,
                    f"not checked: {name} is not healthy (see devmesh.health)",
                )
            else:
                case.outcome = FAILED
                case.message = f"no endpoint of {name} is usable with requires {requires!r}"
                case.details = str(entry.get("detail") or "")
                case.hint = "run a matching version (`devmesh run " + name + "`) or widen requires"
            continue
        origin = used.get("origin")
        where = f"peer {used.get('peer')}" if origin == "peer" else f"{origin} {used.get('address')}"
        version = used.get("version")
        if version is None:
            case.outcome = SKIPPED
            case.message = f"not checked: {name} is served by {where}, which announces no version" + (
                ' (set version = "..." in the config)' if origin in ("local", "registered") else ""
            )
        elif satisfies(version, requires):
            case.message = f"{where} has {version}, inside {requires!r}"
        else:
            case.outcome = FAILED
            case.message = f"{name} is served by {where} at version {version}, outside requires {requires!r}"
            case.hint = (
                f"update that copy of {name}, pin another endpoint (`devmesh route {name} --peer ID`), "
                f"or change requires in [services.{name}]"
            )
