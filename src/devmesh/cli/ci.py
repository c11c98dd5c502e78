"""`devmesh wait` and `devmesh check`: the CI preflight (docs/ci.md).

`wait` blocks until the running mesh is ready; `check` validates the config, the ports, health, a smoke
request per service through the proxy and version constraints, and writes JUnit XML.

Only click at import time: `main.py` imports this module to register the commands, and `devmesh --help`
must stay fast. `wait_for_mesh` is also what the pytest plugin (`devmesh.testing`) waits with.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from devmesh.agent.paths import AgentRecord
    from devmesh.config import LoadedConfig
    from devmesh.config.units import Address

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# The agent writes .devmesh/agent.json once its admin API listens: until then there is nothing to
# subscribe to, so `wait` looks for that file (and retries a refused connection) every 100 ms. Reading a
# small file ten times a second costs nothing, works on every OS without a file-watching dependency, and
# bounds the delay at 0.1 s. Once the agent answers, `wait` follows its events stream: no polling.
RECORD_POLL_S = 0.1
SMOKE_TIMEOUT_S = 10.0  # one smoke request through the proxy (headers only; bodies are not read)
PORT_CONNECT_TIMEOUT_S = 2.0
BODY_EXCERPT_BYTES = 2048


def parse_timeout(ctx: click.Context | None, param: click.Parameter | None, value: object) -> float:
    """`--timeout`: "60s", "2m", "1500ms" or a number of seconds (the config's duration syntax)."""
    from devmesh.config.units import parse_duration_s

    try:
        return parse_duration_s(value if isinstance(value, int | float) else str(value))
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


# -- readiness ---------------------------------------------------------------------------------------


def _served_elsewhere(entry: Mapping[str, Any]) -> bool:
    """A service with no local process whose requests go to a healthy peer or remote endpoint."""
    endpoints = entry.get("endpoints") or []
    if not any(endpoint.get("healthy") for endpoint in endpoints):
        return False
    if entry.get("origin") == "peer":
        return True
    # Remote-only (no command, no port): "stopped" with no local endpoint, by design.
    return (
        entry.get("state") == "stopped"
        and entry.get("pid") is None
        and entry.get("port") is None
        and bool(entry.get("remote"))
        and all(endpoint.get("origin") in ("peer", "remote") for endpoint in endpoints)
    )


def describe(entry: Mapping[str, Any]) -> str:
    """`running, unhealthy: HTTP 500 from /health`: a service's state for a message."""
    text = f"{entry.get('state')}, {entry.get('health')}"
    if entry.get("detail"):
        text += f": {entry['detail']}"
    return text


def service_problem(entry: Mapping[str, Any], *, healthy: bool) -> str | None:
    """Why a service of `/api/v1/status` is not ready yet, or None when it is.

    Ready means healthy with `healthy`, else running; a service with no local process counts when a
    peer or its remote serves it.
    """
    if _served_elsewhere(entry):
        return None
    if healthy and entry.get("health") == "healthy":
        return None
    if not healthy and entry.get("state") == "running":
        return None
    return describe(entry)


@dataclass
class WaitResult:
    """What `wait_for_mesh` saw: the last status document and, per service, when it became ready."""

    ready: bool
    agent: bool  # an agent answered at some point
    status: dict[str, Any] | None
    waiting: dict[str, str]  # service -> why it is not ready (empty when ready)
    ready_after: dict[str, float]  # service -> seconds from the start until it was first ready
    elapsed: float


class _Tracker:
    """The mesh as the events stream tells it: a `hello` with the status, then `service` events."""

    def __init__(self, *, healthy: bool, names: Sequence[str], started: float) -> None:
        self.healthy = healthy
        self.names = list(names)
        self.started = started
        self.status: dict[str, Any] | None = None
        self.services: dict[str, dict[str, Any]] = {}
        self.ready_after: dict[str, float] = {}

    def apply(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "hello":
            self.hello(message["status"])
        elif kind == "service":
            entry = dict(message["service"])
            self.services[entry["name"]] = entry
        elif kind == "service_removed":
            self.services.pop(str(message.get("name")), None)
        else:
            return
        self._mark()

    def hello(self, status: Mapping[str, Any]) -> None:
        self.status = dict(status)
        self.services = {entry["name"]: dict(entry) for entry in status.get("services", [])}
        self._mark()

    def wanted(self) -> list[str]:
        """The names asked for, else every service of this project (not those only a peer offers)."""
        if self.names:
            return self.names
        return [name for name, entry in self.services.items() if entry.get("origin") != "peer"]

    def waiting(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in self.wanted():
            entry = self.services.get(name)
            problem = "not in the mesh" if entry is None else service_problem(entry, healthy=self.healthy)
            if problem is not None:
                found[name] = problem
        return found

    @property
    def ready(self) -> bool:
        return self.status is not None and not self.waiting()

    def _mark(self) -> None:
        now = time.monotonic() - self.started
        for name in self.wanted():
            entry = self.services.get(name)
            if (
                name not in self.ready_after
                and entry is not None
                and service_problem(entry, healthy=self.healthy) is None
            ):
                self.ready_after[name] = now

    def document(self) -> dict[str, Any] | None:
        if self.status is None:
            return None
        return {**self.status, "services": list(self.services.values())}


def _admin_socket_address(record: AgentRecord) -> tuple[str, int]:
    host, _, port = record.admin.rpartition(":")
    return host.strip("[]"), int(port)


def _follow_events(record: AgentRecord, tracker: _Tracker, deadline: float) -> bool | None:
    """Follow one agent's events stream: True once ready, False at the deadline, None if it went away."""
    import socket

    from websockets.exceptions import ConnectionClosed, WebSocketException
    from websockets.sync.client import connect

    remaining = deadline - time.monotonic()
    try:
        # Our own socket: no HTTP proxy from the environment gets between us and loopback.
        sock = socket.create_connection(_admin_socket_address(record), timeout=max(remaining, 0.5))
    except OSError:
        return None
    try:
        stream = connect(
            f"ws://{record.admin}/api/v1/events",
            sock=sock,
            open_timeout=max(remaining, 1.0),
            close_timeout=1.0,
            max_size=None,
            ping_interval=None,
            compression=None,
        )
    except (OSError, TimeoutError, WebSocketException):
        sock.close()
        return None
    with stream:
        while True:
            if tracker.ready:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                text = stream.recv(timeout=remaining)
            except TimeoutError:
                return False
            except (ConnectionClosed, OSError):
                return None
            try:
                message = json.loads(text)
            except ValueError:
                continue
            if isinstance(message, dict):
                tracker.apply(message)


def wait_for_mesh(
    project_dir: Path, *, healthy: bool, services: Sequence[str] = (), timeout_s: float
) -> WaitResult:
    """Block until the project's agent answers and `services` (default: all of this project's) are
    running (healthy, with `healthy`), or `timeout_s` passes. An agent that is not there yet (`devmesh up
    --detach` just started) or restarts is waited for, within the same time."""
    from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
    from devmesh.agent.paths import StatePaths, read_agent_record, read_token

    paths = StatePaths(project_dir)
    started = time.monotonic()
    deadline = started + timeout_s
    tracker = _Tracker(healthy=healthy, names=services, started=started)
    while True:
        record = read_agent_record(paths)
        if record is not None and _follow_events(record, tracker, deadline) is not None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(RECORD_POLL_S, remaining))
    if not tracker.ready:
        # One fresh look at the end: the stream may have been refused, or the last event still in flight.
        record = read_agent_record(paths)
        if record is not None:
            try:
                tracker.hello(AdminClient(record, read_token(paths)).get("/api/v1/status"))
            except (AgentNotRunning, AdminError):
                pass
    return WaitResult(
        ready=tracker.ready,
        agent=tracker.status is not None,
        status=tracker.document(),
        waiting=tracker.waiting() if tracker.status is not None else {},
        ready_after=dict(tracker.ready_after),
        elapsed=time.monotonic() - started,
    )


# -- devmesh wait ------------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)


def _project_dir(ctx: click.Context) -> Path:
    from devmesh.config import ConfigError, find_config

    try:
        return find_config(explicit=ctx.obj.config_file).parent
    except ConfigError as error:
        _fail(str(error), EXIT_USAGE)


def _unknown_services(ctx: click.Context, project_dir: Path, names: Sequence[str]) -> list[str]:
    """Names neither the config nor the running agent knows (a typo should not wait out the timeout)."""
    from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
    from devmesh.agent.paths import StatePaths
    from devmesh.config import ConfigError, find_config, load_config

    known: set[str] = set()
    try:
        known.update(
            load_config(find_config(explicit=ctx.obj.config_file), env_name=ctx.obj.env_name).config.services
        )
    except ConfigError:
        return []  # the running agent keeps its last good config: let it answer
    try:
        document = AdminClient.for_project(StatePaths(project_dir)).get("/api/v1/status")
        known.update(entry["name"] for entry in document["services"])
    except (AgentNotRunning, AdminError):
        pass
    return [name for name in names if name not in known]


@click.command(
    "wait",
    epilog="""\b
Examples:
  devmesh up --detach && devmesh wait --healthy --timeout 120s
  devmesh wait api web --healthy      (only these two)""",
)
@click.argument("services", nargs=-1)
@click.option("--healthy", is_flag=True, help="Wait until every service is healthy (default: running).")
@click.option(
    "--timeout",
    callback=parse_timeout,
    metavar="DURATION",
    default="60s",
    show_default=True,
    help='How long to wait: "60s", "2m", or seconds.',
)
@click.pass_context
def wait(ctx: click.Context, services: tuple[str, ...], healthy: bool, timeout: float) -> None:
    """Block until the mesh is ready: the agent answers and every service (or each SERVICE) runs, or
    is healthy with --healthy. An agent that is still starting is waited for.

    Exits 1 on timeout, naming what is not ready (or the agent, when none answered).
    """
    project_dir = _project_dir(ctx)
    if services:
        unknown = _unknown_services(ctx, project_dir, services)
        if unknown:
            _fail(f"no service named {', '.join(map(repr, unknown))}", EXIT_USAGE)
    result = wait_for_mesh(project_dir, healthy=healthy, services=services, timeout_s=timeout)
    word = "healthy" if healthy else "running"
    if not result.agent:
        _fail(
            f"no devmesh agent answered for {project_dir} within {timeout:g}s "
            "(start it with `devmesh up --detach`; its log is .devmesh/agent.log)"
        )
    if not result.ready:
        lines = [f"not {word} after {timeout:g}s: {', '.join(result.waiting)}"]
        lines += [f"  {name}: {why}" for name, why in result.waiting.items()]
        lines.append("  (`devmesh status` for the whole mesh, `devmesh logs SERVICE` for a service's output)")
        _fail("\n".join(lines))
    assert result.status is not None
    names = list(services) or [
        entry["name"] for entry in result.status["services"] if entry.get("origin") != "peer"
    ]
    what = ", ".join(names) if names else "no service"
    click.echo(f"mesh {result.status['mesh']}: {what} {word} ({result.elapsed:.1f}s)")


# -- devmesh check: results and JUnit ----------------------------------------------------------------

PASSED, FAILED, SKIPPED, ERROR = "passed", "failed", "skipped", "error"


@dataclass
class CheckResult:
    """One check, one JUnit testcase."""

    classname: str  # devmesh.config | ports | agent | health | smoke | versions
    name: str
    outcome: str = PASSED
    message: str = ""  # what is wrong (a failure's message attribute), or what passed
    hint: str = ""  # what to do about it
    details: str = ""  # more: the config's problems, a response body
    note: str = ""  # a pass with a remark (a 404 from the service): the testcase's system-out
    time_s: float = 0.0

    def text(self) -> str:
        return "\n".join(
            part for part in (self.message, self.details, self.hint and f"What to do: {self.hint}") if part
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.classname,
            "name": self.name,
            "result": self.outcome,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
            "note": self.note,
            "time": round(self.time_s, 3),
        }


@dataclass
class Report:
    results: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    timestamp: float = field(default_factory=time.time)

    def add(self, result: CheckResult) -> CheckResult:
        self.results.append(result)
        return result

    def count(self, outcome: str) -> int:
        return sum(1 for result in self.results if result.outcome == outcome)

    @property
    def ok(self) -> bool:
        return not self.count(FAILED) and not self.count(ERROR)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def junit_xml(report: Report) -> bytes:
    """The report as JUnit XML (`<testsuites><testsuite name="devmesh"><testcase ...>`), as Jenkins, GitLab
    and the GitHub test-report actions read it."""
    import socket
    import xml.etree.ElementTree as ET

    totals = {
        "tests": str(len(report.results)),
        "failures": str(report.count(FAILED)),
        "errors": str(report.count(ERROR)),
        "skipped": str(report.count(SKIPPED)),
        "time": f"{report.elapsed():.3f}",
    }
    root = ET.Element("testsuites", {"name": "devmesh check", **totals})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": "devmesh",
            **totals,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(report.timestamp)),
            "hostname": socket.gethostname(),
        },
    )
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            {"classname": result.classname, "name": result.name, "time": f"{result.time_s:.3f}"},
        )
        if result.outcome == FAILED:
            element = ET.SubElement(case, "failure", {"message": result.message, "type": "CheckFailed"})
            element.text = result.text()
        elif result.outcome == ERROR:
            element = ET.SubElement(case, "error", {"message": result.message, "type": "CheckError"})
            element.text = result.text()
        elif result.outcome == SKIPPED:
            ET.SubElement(case, "skipped", {"message": result.message})
        if result.note:
            ET.SubElement(case, "system-out").text = result.note
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True)) + b"\n"


def _write_junit(path: Path, report: Report) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(junit_xml(report))
    os.replace(temporary, path)


def _print_report(report: Report, junit: Path | None) -> None:
    from devmesh.cli.table import paint, print_table
    from devmesh.supervisor.logs import colour_enabled

    colour = colour_enabled(sys.stdout)
    colours = {PASSED: "green", FAILED: "red", ERROR: "red", SKIPPED: "yellow"}
    rows = [
        [
            result.classname.removeprefix("devmesh."),
            result.name,
            paint(result.outcome, colours[result.outcome], colour),
            f"{result.time_s:.2f}s",
            result.message if result.outcome != PASSED else (result.note or result.message),
        ]
        for result in report.results
    ]
    print_table(["check", "name", "result", "time", "message"], rows)
    for result in report.results:
        if result.outcome in (FAILED, ERROR):
            click.echo(f"\n{result.outcome.upper()} {result.classname} {result.name}")
            for line in result.text().splitlines():
                click.echo(f"  {line}")
    summary = (
        f"\n{len(report.results)} checks: {report.count(PASSED)} passed, {report.count(FAILED)} failed, "
        f"{report.count(ERROR)} errors, {report.count(SKIPPED)} skipped ({report.elapsed():.1f}s)"
    )
    click.echo(summary + (f"; JUnit XML in {junit}" if junit else ""))


# -- devmesh check: the checks -----------------------------------------------------------------------


def _check_config(ctx: click.Context, report: Report) -> LoadedConfig | None:
    from devmesh.config import ConfigError, find_config, load_config

    began = time.monotonic()
    name = str(ctx.obj.config_file or "devmesh.toml")
    try:
        path = find_config(explicit=ctx.obj.config_file)
        name = path.name
        loaded = load_config(path, env_name=ctx.obj.env_name)
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


def _who_listens(port: int) -> str:
    """`pid 1234 (nginx)` for what holds a local TCP port, when the OS lets us see it."""
    try:
        import psutil

        for connection in psutil.net_connections(kind="tcp"):
            if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
                if connection.pid is None:
                    return "another user's process"
                return f"pid {connection.pid} ({psutil.Process(connection.pid).name()})"
    except Exception:  # best effort: permissions, a process that just exited
        pass
    return ""


def _bind_error(address: Address) -> str | None:
    """Why `address` cannot be listened on, or None when it is free."""
    import socket

    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except OSError as error:
        return f"cannot resolve {address.host}: {error}"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent binds: TIME_WAIT is fine
        try:
            sock.bind(sockaddr)
        except OSError as error:
            return error.strerror or str(error)
    return None


def _ports_to_check(loaded: LoadedConfig) -> list[tuple[str, Address]]:
    proxy = loaded.config.proxy
    ports = [("listen", proxy.listen), ("admin", proxy.admin)]
    if proxy.https is not None:
        ports.append(("https", proxy.https))
    shares = loaded.config.mesh.share or any(spec.share for spec in loaded.config.services.values())
    if shares or loaded.config.peers.static:
        ports.append(("mesh", proxy.mesh))
    return ports


def _check_ports_free(loaded: LoadedConfig, report: Report) -> bool:
    """No agent runs: the addresses the agent will listen on must be free."""
    free = True
    for key, address in _ports_to_check(loaded):
        began = time.monotonic()
        result = CheckResult("devmesh.ports", f"{key} {address}")
        if address.port == 0:
            result.message = "port 0: the agent picks a free port when it starts"
        else:
            error = _bind_error(address)
            if error is None:
                result.message = "free"
            else:
                free = False
                holder = _who_listens(address.port)
                result.outcome = FAILED
                result.message = f"{address} is not free: {error}" + (f", held by {holder}" if holder else "")
                result.hint = (
                    f"stop what listens there (another devmesh? `devmesh down` in its project), or set "
                    f'[proxy] {key} = "{address.host}:0" (any free port) in {loaded.path.name}'
                )
        result.time_s = time.monotonic() - began
        report.add(result)
    return free


def _check_ports_answer(agent: Mapping[str, Any], report: Report) -> None:
    """An agent runs: each address it listens on must accept connections."""
    import socket

    report.add(
        CheckResult("devmesh.ports", f"admin {agent['admin']}", message="answers (GET /api/v1/status)")
    )
    for key in ("listen", "https", "mesh"):
        address = agent.get(key)
        if not address:
            continue
        began = time.monotonic()
        result = CheckResult("devmesh.ports", f"{key} {address}", message="accepts connections")
        host, _, port = str(address).rpartition(":")
        if host.strip("[]") in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=PORT_CONNECT_TIMEOUT_S).close()
        except OSError as error:
            result.outcome = FAILED
            result.message = f"the agent's {key} address {address} refuses connections: {error}"
            result.hint = "see .devmesh/agent.log; `devmesh down && devmesh up --detach` restarts the agent"
        result.time_s = time.monotonic() - began
        report.add(result)


def _devmesh_argv(loaded: LoadedConfig, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "devmesh", "-f", str(loaded.path)]
    if loaded.env_name:
        argv += ["--env", loaded.env_name]
    return argv + list(args)


@dataclass
class Started:
    """What `start_agent` did: the pid of the agent it started (None: it started none), and `up`'s exit
    code and output."""

    pid: int | None
    code: int
    output: str


def start_agent(config: Path, env_name: str | None, timeout_s: float) -> Started:
    """`devmesh up --detach` for `config`, and the agent it started, even one `up` gave up waiting for.

    `up --detach` exits 1 when the services are not healthy in time, and the agent keeps running: it may
    not even have written its record yet (its admin API starts up to 2 s after the services). The record
    is then waited for while that agent lives, so that the caller can stop what it started.
    """
    import re
    import subprocess

    import psutil

    from devmesh import const
    from devmesh.agent.paths import StatePaths, read_agent_record

    argv = [sys.executable, "-m", "devmesh", "-f", str(config)]
    if env_name:
        argv += ["--env", env_name]
    try:
        run = subprocess.run(
            [*argv, "up", "--detach", "--timeout", f"{max(timeout_s, 1.0):.1f}"],
            cwd=config.parent,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=max(timeout_s, 1.0) + const.AGENT_START_TIMEOUT_S,
        )
        code, output = run.returncode, "\n".join(part for part in (run.stdout, run.stderr) if part).strip()
    except subprocess.TimeoutExpired:
        code, output = -1, "`devmesh up --detach` did not return"
    if "already running" in output:
        return Started(None, code, output)  # another agent won the race: not ours to stop
    paths = StatePaths(config.parent)
    kept = re.search(r"the agent keeps running \(pid (\d+)\)", output)
    pid = int(kept.group(1)) if kept else None
    deadline = time.monotonic() + const.AGENT_START_TIMEOUT_S
    while True:
        record = read_agent_record(paths)
        if record is not None:
            return Started(record.pid, code, output)
        if pid is None or not psutil.pid_exists(pid) or time.monotonic() > deadline:
            break
        time.sleep(RECORD_POLL_S)
    if pid is not None and psutil.pid_exists(pid):
        # Ours, alive, and never reachable: stop it rather than leave it behind.
        try:
            process = psutil.Process(pid)
            process.terminate()
            process.wait(const.AGENT_STOP_TIMEOUT_S)
        except psutil.Error:
            pass
    return Started(None, code, output)


def _start_agent(loaded: LoadedConfig, deadline: float, report: Report) -> int | None:
    """`devmesh up --detach`; the agent's pid when it runs (even if not every service became healthy)."""
    began = time.monotonic()
    result = report.add(CheckResult("devmesh.agent", "start"))
    started = start_agent(loaded.path, loaded.env_name, deadline - began)
    result.time_s = time.monotonic() - began
    if started.pid is None:
        result.outcome = FAILED
        result.message = (
            f"no agent was running and `devmesh up --detach` could not start one (exit {started.code})"
        )
        result.details = started.output[-3000:]
        result.hint = (
            f"run `devmesh up` in {loaded.project_dir} to see why; the agent's log is .devmesh/agent.log"
        )
        return None
    result.message = f"no agent was running: started one (pid {started.pid}); check stops it at the end"
    return started.pid


def _stop_agent(loaded: LoadedConfig, pid: int, report: Report) -> None:
    import subprocess

    from devmesh import const

    began = time.monotonic()
    result = report.add(
        CheckResult("devmesh.agent", "stop", message=f"stopped the agent check started (pid {pid})")
    )
    try:
        run = subprocess.run(
            _devmesh_argv(loaded, "down"),
            cwd=loaded.project_dir,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=const.AGENT_STOP_TIMEOUT_S + 15,
        )
        code, output = run.returncode, (run.stderr or run.stdout).strip()
    except subprocess.TimeoutExpired:
        code, output = -1, "timed out"
    result.time_s = time.monotonic() - began
    if code != 0:
        result.outcome = FAILED
        result.message = f"`devmesh down` failed (exit {code}): {output[-500:]}"
        result.hint = f"stop it by hand: `devmesh down` in {loaded.project_dir}, or kill pid {pid}"


def _skip_service_checks(names: Iterable[str], why: str, report: Report) -> None:
    for name in names:
        report.add(CheckResult("devmesh.health", name, SKIPPED, message=f"not checked: {why}"))


def _check_health(result: WaitResult, timeout: float, report: Report) -> dict[str, dict[str, Any]]:
    """A testcase per service (its time: until it was healthy, or the whole wait, counted from the start
    of check); returns the services' last status entries."""
    waited_from = report.elapsed() - result.elapsed
    assert result.status is not None
    entries = {entry["name"]: entry for entry in result.status["services"] if entry.get("origin") != "peer"}
    for name, entry in entries.items():
        problem = result.waiting.get(name)
        case = CheckResult("devmesh.health", name)
        if problem is None:
            case.time_s = waited_from + result.ready_after.get(name, 0.0)
            case.message = (
                describe(entry) if not _served_elsewhere(entry) else "served by a peer or its remote"
            )
        else:
            case.time_s = report.elapsed()
            case.outcome = FAILED
            case.message = f"{name} is not healthy after {timeout:g}s: {problem}"
            case.hint = (
                f"`devmesh logs {name}` for its output, `devmesh status` for the mesh; "
                "a slow start needs a longer --timeout"
            )
        report.add(case)
    return entries


def _smoke_targets(
    loaded: LoadedConfig, name: str, entry: Mapping[str, Any], listen_port: int
) -> list[tuple[str, str]]:
    """(Host header, path) pairs to GET for a service: its health path (or /) on its host, each route."""
    from urllib.parse import urlsplit

    spec = loaded.config.services.get(name)
    targets: list[tuple[str, str]] = []
    url = entry.get("url")
    parts = urlsplit(url) if url else None
    if parts is not None and parts.path in ("", "/"):  # a host of its own (else the URL is a route)
        health = spec.health.http if spec is not None and spec.health is not None else None
        targets.append((parts.netloc, health or "/"))
    domain = loaded.config.mesh.domain
    authority = domain if listen_port == 80 else f"{domain}:{listen_port}"
    for prefix in spec.routes if spec is not None else []:
        targets.append((authority, prefix.rstrip("*") or "/"))
    return targets


def _smoke(listen: str, host: str, path: str) -> tuple[int | None, str, str, str]:
    """GET `path` as `Host: host` through the proxy: (status or None, served by, excerpt, error)."""
    import http.client

    from devmesh import __version__

    address, _, port = listen.rpartition(":")
    address = address.strip("[]")
    if address in ("0.0.0.0", "::"):
        address = "127.0.0.1" if address == "0.0.0.0" else "::1"
    connection = http.client.HTTPConnection(address, int(port), timeout=SMOKE_TIMEOUT_S)
    try:
        connection.request(
            "GET",
            path,
            headers={
                "Host": host,
                "Accept": "application/json",
                "User-Agent": f"devmesh-check/{__version__}",
            },
        )
        response = connection.getresponse()
        served_by = response.getheader("X-DevMesh-Served-By") or ""
        excerpt = ""
        if response.status >= 400:
            # Only error bodies, and only a little: a healthy page may stream forever (server-sent events).
            try:
                excerpt = response.read(BODY_EXCERPT_BYTES).decode("utf-8", "replace").strip()
            except (OSError, http.client.HTTPException):
                excerpt = ""
        return response.status, served_by, excerpt, ""
    except (OSError, http.client.HTTPException) as error:
        return None, "", "", f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    finally:
        connection.close()


def _devmesh_page(excerpt: str) -> str:
    """The message and hint of devmesh's own JSON error page."""
    try:
        page = json.loads(excerpt)
    except ValueError:
        return excerpt[:300]
    if not isinstance(page, dict):
        return excerpt[:300]
    parts = [str(page.get("message") or page.get("error") or "")]
    if page.get("hint"):
        parts.append(f"devmesh says: {page['hint']}")
    return " ".join(part for part in parts if part)


def _check_smoke(
    loaded: LoadedConfig,
    entries: Mapping[str, Mapping[str, Any]],
    unhealthy: set[str],
    listen: str | None,
    report: Report,
) -> None:
    """A GET through the proxy per service and per route: 5xx and connection errors fail; a 4xx the
    service itself answered passes with a note (the mesh reaches it); a 4xx from devmesh (no route) fails."""
    listen_port = int(listen.rpartition(":")[2]) if listen else 0
    for name, entry in entries.items():
        targets = _smoke_targets(loaded, name, entry, listen_port)
        if not targets:
            report.add(
                CheckResult(
                    "devmesh.smoke",
                    name,
                    SKIPPED,
                    message="no host name or route to request (only wildcard hosts)",
                )
            )
            continue
        for host, path in targets:
            case = report.add(CheckResult("devmesh.smoke", f"{name} GET http://{host}{path}"))
            if name in unhealthy:
                case.outcome, case.message = (
                    SKIPPED,
                    f"not checked: {name} is not healthy (see devmesh.health)",
                )
                continue
            if listen is None:
                case.outcome, case.message = SKIPPED, "not checked: the agent has no proxy listen address"
                continue
            began = time.monotonic()
            status, served_by, excerpt, error = _smoke(listen, host, path)
            case.time_s = time.monotonic() - began
            url = f"http://{host}{path}"
            if status is None:
                case.outcome = FAILED
                case.message = f"GET {url} through the proxy at {listen} failed: {error}"
                case.hint = "see .devmesh/agent.log and `devmesh logs " + name + "`"
            elif status >= 500:
                case.outcome = FAILED
                who = f"{served_by}" if served_by else "devmesh (no endpoint answered)"
                case.message = f"GET {url} answered {status} from {who}"
                case.details = _devmesh_page(excerpt) if not served_by else excerpt[:1000]
                case.hint = f"`devmesh logs {name}` shows the service's side; `devmesh requests -s {name}` the request"
            elif status >= 400 and not served_by:
                case.outcome = FAILED
                case.message = f"GET {url} answered {status} from devmesh itself: nothing routes there"
                case.details = _devmesh_page(excerpt)
                case.hint = (
                    f"check hosts / routes of [services.{name}] and [mesh] domain in {loaded.path.name}"
                )
            else:
                case.message = f"{status} from {served_by or 'devmesh'}"
                if status >= 400:
                    case.note = f"{status} from {served_by}: the mesh reaches {name}, which has nothing to serve at {path}"


def _check_versions(entries: Mapping[str, Mapping[str, Any]], unhealthy: set[str], report: Report) -> None:
    """For each service with `requires`: the endpoint requests go to (the first healthy one, in the
    order the proxy tries them) has a version inside the range."""
    from devmesh.peers.versions import satisfies

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


@click.command(
    "check",
    epilog="""\b
Examples:
  devmesh check
  devmesh check --junit devmesh-junit.xml --timeout 2m
  devmesh check --json""",
)
@click.option(
    "--junit", "junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML to FILE."
)
@click.option(
    "--timeout",
    callback=parse_timeout,
    metavar="DURATION",
    default="60s",
    show_default=True,
    help='How long services may take to become healthy: "60s", "2m", or seconds.',
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--start/--no-start",
    default=True,
    show_default=True,
    help="When no agent runs: start one (and stop it at the end), or fail.",
)
@click.pass_context
def check(ctx: click.Context, junit: Path | None, timeout: float, as_json: bool, start: bool) -> None:
    """Preflight for CI: the config is valid, the ports are free (or the running agent's answer), every
    service is healthy and answers a GET through the proxy (its health path, each route), and the
    versions in use satisfy `requires`. One JUnit testcase per check.

    With no agent running, check starts one and stops it at the end (--no-start: fail instead).

    Exits 0 when every check passed, 1 when one failed, 2 when the config is invalid.
    """
    report = Report()
    deadline = report.started + timeout
    loaded = _check_config(ctx, report)
    started_pid: list[int] = []
    write_error = ""
    try:
        if loaded is not None:
            _run_checks(loaded, deadline, timeout, start, as_json, report, started_pid)
    except Exception as error:  # a bug in a check: reported as a JUnit error, never a lost report
        import traceback

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
        if loaded is not None and started_pid:
            _stop_agent(loaded, started_pid[0], report)
        if junit is not None:
            try:
                _write_junit(junit, report)
            except OSError as error:
                write_error = f"cannot write the JUnit XML to {junit}: {error}"
    if as_json:
        document = {
            "ok": report.ok,
            "tests": len(report.results),
            "failures": report.count(FAILED),
            "errors": report.count(ERROR),
            "skipped": report.count(SKIPPED),
            "time": round(report.elapsed(), 3),
            "junit": str(junit) if junit else None,
            "checks": [result.as_dict() for result in report.results],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        _print_report(report, None if write_error else junit)
    if write_error:
        _fail(write_error, EXIT_USAGE)
    if loaded is None:
        raise SystemExit(EXIT_USAGE)
    raise SystemExit(EXIT_OK if report.ok else EXIT_FAILURE)


def _run_checks(
    loaded: LoadedConfig,
    deadline: float,
    timeout: float,
    start: bool,
    as_json: bool,
    report: Report,
    started_pid: list[int],
) -> None:
    """Ports, agent, health, smoke and versions; the pid of an agent this run starts goes into
    `started_pid` at once, so that it is stopped even if a later check breaks."""
    from devmesh.agent.client import AdminClient, AdminError, AgentNotRunning
    from devmesh.agent.paths import StatePaths, read_agent_record, read_token

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
            _skip_service_checks(services, "the agent does not answer (see devmesh.ports)", report)
            return
        _check_ports_answer(status["agent"], report)
    elif not _check_ports_free(loaded, report):
        _skip_service_checks(services, "a port the agent needs is taken (see devmesh.ports)", report)
        return
    elif not start:
        report.add(
            CheckResult(
                "devmesh.agent",
                "running",
                FAILED,
                message=f"no devmesh agent runs for {loaded.project_dir}",
                hint="start it first (`devmesh up --detach`), or let check start it (drop --no-start)",
            )
        )
        _skip_service_checks(services, "no agent runs (see devmesh.agent)", report)
        return
    else:
        pid = _start_agent(loaded, deadline, report)
        if pid is None:
            _skip_service_checks(services, "the agent could not start (see devmesh.agent start)", report)
            return
        started_pid.append(pid)
    if not as_json:
        click.echo(f"devmesh check: waiting up to {timeout:g}s for every service to be healthy", err=True)
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
        _skip_service_checks(services, "the agent stopped answering", report)
        return
    entries = _check_health(waited, timeout, report)
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
    _check_smoke(loaded, entries, unhealthy, listen, report)
    _check_versions(entries, unhealthy, report)
