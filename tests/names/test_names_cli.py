"""`devmesh install` / `devmesh uninstall` as a user runs them, on a temp hosts file (never /etc/hosts).

Every run gets DEVMESH_HOSTS_FILE and the three DNS folder variables pointing into tmp_path, so that
no test can reach the machine's own hosts file or DNS configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Project, devmesh

USER_HOSTS = b"127.0.0.1 localhost\n::1 localhost\n\n# added by me\n10.0.0.5 nas.lan\n"
CONFIG = """
[mesh]
name = "shop"
domain = "shop.test"

[services.api]
port = 3001

[services.web]
port = 3002
hosts = ["web", "www"]
routes = ["/web"]
"""


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.hosts = root / "etc" / "hosts"
        self.dnsmasq = root / "dnsmasq.d"
        self.resolved = root / "resolved.conf.d"
        self.hosts.parent.mkdir()
        self.dnsmasq.mkdir()
        self.resolved.mkdir()
        self.hosts.write_bytes(USER_HOSTS)
        self.env = {
            "DEVMESH_HOSTS_FILE": str(self.hosts),
            "DEVMESH_DNSMASQ_DIR": str(self.dnsmasq),
            "DEVMESH_RESOLVED_DIR": str(self.resolved),
            "DEVMESH_RESOLVER_DIR": str(root / "resolver"),
        }

    @property
    def backup(self) -> Path:
        return self.hosts.with_name("hosts.devmesh.bak")

    def folder_listing(self) -> list[str]:
        return sorted(
            str(path.relative_to(self.hosts.parent.parent))
            for path in self.hosts.parent.parent.rglob("*")
            if path.is_file()
        )


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    root = tmp_path / "sandbox"
    root.mkdir()
    return Sandbox(root)


def run(project: Project, sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return devmesh(*args, cwd=project.root, env=sandbox.env)


def test_install_adds_the_block_and_a_second_run_is_up_to_date(project: Project, sandbox: Sandbox) -> None:
    project.write(CONFIG)

    first = run(project, sandbox, "install", "--auto", "--yes")

    assert first.returncode == 0, first.stderr
    assert f"replaced {sandbox.hosts} (previous content: {sandbox.backup})" in first.stdout
    marker = f"# >>> devmesh shop (managed by devmesh; remove with devmesh uninstall; project {project.root.resolve()}) >>>\n"
    assert sandbox.hosts.read_bytes() == USER_HOSTS + marker.encode() + (
        b"127.0.0.1 shop.test api.shop.test web.shop.test www.shop.test\n# <<< devmesh shop <<<\n"
    )
    assert sandbox.backup.read_bytes() == USER_HOSTS
    installed = sandbox.hosts.read_bytes()
    mtime = sandbox.hosts.stat().st_mtime_ns

    second = run(project, sandbox, "install", "--auto", "--yes")

    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert sandbox.hosts.read_bytes() == installed
    assert sandbox.hosts.stat().st_mtime_ns == mtime


def test_a_changed_config_updates_the_block_in_place(project: Project, sandbox: Sandbox) -> None:
    project.write(CONFIG)
    assert run(project, sandbox, "install", "--yes").returncode == 0
    with sandbox.hosts.open("ab") as handle:
        handle.write(b"10.0.0.7 printer.lan\n")  # the user adds a line after devmesh's block
    project.write(CONFIG + '\n[services.admin]\nport = 3003\nhosts = ["admin"]\n')

    result = run(project, sandbox, "install", "--auto", "--yes")

    assert result.returncode == 0, result.stderr
    text = sandbox.hosts.read_bytes()
    assert text.startswith(USER_HOSTS)
    assert b"127.0.0.1 shop.test admin.shop.test api.shop.test web.shop.test www.shop.test\n" in text
    assert text.endswith(b"# <<< devmesh shop <<<\n10.0.0.7 printer.lan\n")
    assert text.count(b">>> devmesh shop") == 1


def test_uninstall_restores_the_original_bytes_and_is_idempotent(project: Project, sandbox: Sandbox) -> None:
    project.write(CONFIG)
    assert run(project, sandbox, "install", "--yes").returncode == 0
    installed = sandbox.hosts.read_bytes()

    removed = run(project, sandbox, "uninstall")

    assert removed.returncode == 0, removed.stderr
    assert sandbox.hosts.read_bytes() == USER_HOSTS
    assert sandbox.backup.read_bytes() == installed
    again = run(project, sandbox, "uninstall")
    assert again.returncode == 0
    assert "up to date" in again.stdout
    assert sandbox.hosts.read_bytes() == USER_HOSTS


def test_uninstall_all_works_without_a_config(tmp_path: Path, project: Project, sandbox: Sandbox) -> None:
    project.write(CONFIG)
    assert run(project, sandbox, "install", "--yes").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    result = devmesh("uninstall", "--all", cwd=elsewhere, env=sandbox.env)

    assert result.returncode == 0, result.stderr
    assert sandbox.hosts.read_bytes() == USER_HOSTS


def test_dry_run_prints_the_exact_diff_and_writes_nothing(project: Project, sandbox: Sandbox) -> None:
    project.write(CONFIG)
    before = sandbox.folder_listing()

    result = run(project, sandbox, "install", "--auto", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert f"--- {sandbox.hosts}\n+++ {sandbox.hosts}\n" in result.stdout
    assert "+127.0.0.1 shop.test api.shop.test web.shop.test www.shop.test\n" in result.stdout
    assert "nothing was written" in result.stdout
    assert sandbox.hosts.read_bytes() == USER_HOSTS
    assert sandbox.folder_listing() == before


def test_without_yes_and_without_a_terminal_it_refuses_and_writes_nothing(
    project: Project, sandbox: Sandbox
) -> None:
    project.write(CONFIG)

    result = run(project, sandbox, "install", "--auto")

    assert result.returncode == 1
    assert "pass --yes" in result.stderr
    assert "+127.0.0.1 shop.test" in result.stdout  # it shows what it would have done
    assert sandbox.hosts.read_bytes() == USER_HOSTS
    assert not sandbox.backup.exists()


def test_wildcards_get_a_dnsmasq_snippet(project: Project, sandbox: Sandbox) -> None:
    project.write(CONFIG + '\n[services.tenants]\nport = 3004\nhosts = ["*.tenant"]\n')

    result = run(project, sandbox, "install", "--auto", "--yes")

    assert result.returncode == 0, result.stderr
    snippet = (sandbox.dnsmasq / "devmesh-shop.conf").read_text()
    assert "address=/shop.test/127.0.0.1" in snippet.splitlines()
    assert list(sandbox.resolved.iterdir()) == []  # no global resolved setting: printed steps instead
    assert "then run: sudo systemctl restart dnsmasq" in result.stdout
    assert "by hand (devmesh does not change system DNS settings):" in result.stdout
    assert "sudo resolvectl domain devmesh0 '~shop.test' " in result.stdout
    assert b"api.shop.test" in sandbox.hosts.read_bytes()

    assert run(project, sandbox, "uninstall").returncode == 0
    assert list(sandbox.dnsmasq.iterdir()) == []
    assert list(sandbox.resolved.iterdir()) == []
    assert sandbox.hosts.read_bytes() == USER_HOSTS


def test_a_localhost_domain_needs_nothing(project: Project, sandbox: Sandbox) -> None:
    project.write(CONFIG.replace('domain = "shop.test"', 'domain = "localhost"'))

    result = run(project, sandbox, "install", "--auto", "--yes")

    assert result.returncode == 0
    assert "nothing to install" in result.stdout
    assert sandbox.hosts.read_bytes() == USER_HOSTS


def test_a_hosts_file_in_a_missing_folder_is_refused(
    project: Project, sandbox: Sandbox, tmp_path: Path
) -> None:
    project.write(CONFIG)
    missing = tmp_path / "no-such-folder" / "hosts"

    result = devmesh(
        "install", "--yes", cwd=project.root, env={**sandbox.env, "DEVMESH_HOSTS_FILE": str(missing)}
    )

    assert result.returncode == 1
    assert f"{missing.parent} does not exist" in result.stderr
    assert not missing.parent.exists()


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A folder another user can read (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="devmesh-names-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="runs devmesh as another user: needs root and setpriv",
)
def test_a_user_who_may_not_write_the_hosts_file_gets_the_sudo_line(world_readable_dir: Path) -> None:
    # Really unprivileged (uid 65534), not a chmod root would ignore: the refusal comes from access(2).
    project = world_readable_dir / "project"
    project.mkdir()
    (project / "devmesh.toml").write_text(CONFIG)
    etc = world_readable_dir / "etc"
    etc.mkdir()
    hosts = etc / "hosts"
    hosts.write_bytes(USER_HOSTS)
    for path in (project, etc):
        path.chmod(0o755)
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "HOME": str(world_readable_dir),
        "DEVMESH_HOSTS_FILE": str(hosts),
        "DEVMESH_DNSMASQ_DIR": str(world_readable_dir / "dnsmasq.d"),
        "DEVMESH_RESOLVED_DIR": str(world_readable_dir / "resolved.conf.d"),
    }

    result = subprocess.run(
        [*AS_NOBODY, sys.executable, "-m", "devmesh", "install", "--auto", "--yes"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{hosts} is not writable by this user" in result.stderr
    assert "this needs root (nothing was written)" in result.stderr
    assert f"sudo env DEVMESH_HOSTS_FILE={hosts} " in result.stderr
    assert " devmesh install --auto --yes\n" in result.stderr
    assert hosts.read_bytes() == USER_HOSTS
    assert sorted(path.name for path in etc.iterdir()) == ["hosts"]  # no backup, no temp file


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
@pytest.mark.parametrize(("answer", "written"), [("y", True), ("n", False)])
def test_at_a_terminal_it_asks_first(project: Project, sandbox: Sandbox, answer: str, written: bool) -> None:
    import pty
    import select

    project.write(CONFIG)
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "devmesh", "install", "--auto"],
        cwd=project.root,
        env={**os.environ, "NO_COLOR": "1", **sandbox.env},
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while b"Apply these changes? [y/N]" not in output and time.monotonic() < deadline:
            assert not output.count(b"devmesh:"), output
            if select.select([primary], [], [], 0.5)[0]:
                output += os.read(primary, 4096)
        assert sandbox.hosts.read_bytes() == USER_HOSTS  # nothing before the answer
        os.write(primary, answer.encode() + b"\n")
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        os.close(primary)

    assert code == (0 if written else 1)
    assert (b"api.shop.test" in sandbox.hosts.read_bytes()) is written
    assert sandbox.backup.exists() is written


def test_help_has_examples_and_the_command_module_stays_light(tmp_path: Path) -> None:
    for command in ("install", "uninstall"):
        result = devmesh(command, "--help", cwd=tmp_path)
        assert result.returncode == 0
        assert "Examples:" in result.stdout and f"devmesh {command}" in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, devmesh.cli.main; print(sorted(m for m in sys.modules if 'names' in m))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert "devmesh.names" not in probe.stdout  # loaded when a command runs, not for --help


def test_uninstall_by_mesh_name_needs_no_config(tmp_path: Path, project: Project, sandbox: Sandbox) -> None:
    project.write(CONFIG)
    assert run(project, sandbox, "install", "--yes").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    without = devmesh("uninstall", cwd=elsewhere, env=sandbox.env)
    assert without.returncode == 2
    assert "devmesh uninstall --mesh NAME, or --all" in without.stderr

    other = devmesh("uninstall", "--mesh", "blog", cwd=elsewhere, env=sandbox.env)
    assert other.returncode == 0 and "up to date" in other.stdout
    assert b"api.shop.test" in sandbox.hosts.read_bytes()

    removed = devmesh("uninstall", "--mesh", "shop", cwd=elsewhere, env=sandbox.env)
    assert removed.returncode == 0, removed.stderr
    assert sandbox.hosts.read_bytes() == USER_HOSTS


WILDCARDS = CONFIG + '\n[services.tenants]\nport = 3004\nhosts = ["*.tenant"]\n'


def test_the_dns_method_without_dnsmasq_changes_nothing(
    project: Project, sandbox: Sandbox, tmp_path: Path
) -> None:
    project.write(WILDCARDS)
    assert run(project, sandbox, "install", "--method", "hosts", "--yes").returncode == 1  # wildcards left
    installed = sandbox.hosts.read_bytes()
    env = {**sandbox.env, "DEVMESH_DNSMASQ_DIR": str(tmp_path / "no-dnsmasq.d")}
    listing = sandbox.folder_listing()

    result = devmesh("install", "--method", "dns", "--yes", cwd=project.root, env=env)

    assert result.returncode == 1
    assert "--method dns cannot be used here" in result.stderr
    assert sandbox.hosts.read_bytes() == installed  # the working block was not taken out
    assert sandbox.folder_listing() == listing


def test_two_projects_called_app_do_not_take_each_others_names(tmp_path: Path, sandbox: Sandbox) -> None:
    first, second = tmp_path / "one" / "app", tmp_path / "two" / "app"
    for folder, host in ((first, "api"), (second, "admin")):
        folder.mkdir(parents=True)
        (folder / "devmesh.toml").write_text(
            f'[mesh]\ndomain = "app.test"\n\n[services.{host}]\nport = 3001\n'
        )
    assert devmesh("install", "--yes", cwd=first, env=sandbox.env).returncode == 0
    installed = sandbox.hosts.read_bytes()
    assert f"; project {first.resolve()}) >>>".encode() in installed

    refused = devmesh("install", "--yes", cwd=second, env=sandbox.env)

    assert refused.returncode == 1
    assert f"devmesh wrote for another project, {first.resolve()}, with other names" in refused.stderr
    assert sandbox.hosts.read_bytes() == installed
    kept = devmesh("uninstall", cwd=second, env=sandbox.env)
    assert kept.returncode == 0 and "note: kept the hosts-file block of mesh 'app'" in kept.stdout
    assert sandbox.hosts.read_bytes() == installed
    assert devmesh("uninstall", "--mesh", "app", cwd=second, env=sandbox.env).returncode == 0
    assert sandbox.hosts.read_bytes() == USER_HOSTS
    assert devmesh("install", "--yes", cwd=second, env=sandbox.env).returncode == 0


def test_install_and_uninstall_print_the_plan_and_the_outcome_as_json(
    project: Project, sandbox: Sandbox
) -> None:
    import json

    project.write(WILDCARDS)

    planned = run(project, sandbox, "install", "--auto", "--dry-run", "--json")

    assert planned.returncode == 0, planned.stderr
    document = json.loads(planned.stdout)
    assert document["command"] == "install" and document["dry_run"] is True
    assert document["mesh"] == "shop" and document["domain"] == "shop.test"
    assert document["wildcards"] == ["*.tenant.shop.test"]
    assert [(c["path"], c["action"]) for c in document["changes"]] == [
        (str(sandbox.hosts), "update"),
        (str(sandbox.dnsmasq / "devmesh-shop.conf"), "create"),
    ]
    assert "+127.0.0.1 shop.test api.shop.test" in document["changes"][0]["diff"]
    assert any("resolvectl domain devmesh0 '~shop.test'" in line for line in document["manual"])
    assert document["written"] is False and document["applied"] == []
    assert sandbox.hosts.read_bytes() == USER_HOSTS

    unasked = run(project, sandbox, "install", "--json")
    assert unasked.returncode == 1
    assert "pass --yes" in json.loads(unasked.stdout)["error"]
    assert sandbox.hosts.read_bytes() == USER_HOSTS

    applied = json.loads(run(project, sandbox, "install", "--yes", "--json").stdout)
    assert applied["written"] is True and applied["error"] is None
    assert applied["applied"][0] == {
        "path": str(sandbox.hosts),
        "how": "replaced",
        "backup": str(sandbox.backup),
    }
    assert applied["then"] == ["sudo systemctl restart dnsmasq"]

    removed = run(project, sandbox, "uninstall", "--json")
    assert removed.returncode == 0, removed.stderr
    document = json.loads(removed.stdout)
    assert document["command"] == "uninstall" and document["mesh"] == "shop"
    assert [c["action"] for c in document["changes"]] == ["update", "delete"]
    assert [done["how"] for done in document["applied"]] == ["replaced", "deleted"]
    assert any("ip link delete devmesh0" in line for line in document["manual"])
    assert sandbox.hosts.read_bytes() == USER_HOSTS


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_as_root_a_dns_folder_another_user_owns_is_refused(project: Project, sandbox: Sandbox) -> None:
    project.write(WILDCARDS)
    os.chown(sandbox.dnsmasq, 65534, 65534)  # Homebrew's dnsmasq.d belongs to the user

    result = run(project, sandbox, "install", "--auto", "--yes")

    assert result.returncode == 1
    assert f"{sandbox.dnsmasq} belongs to " in result.stderr and "not root" in result.stderr
    assert "nothing was written" in result.stderr
    assert sandbox.hosts.read_bytes() == USER_HOSTS
    assert list(sandbox.dnsmasq.iterdir()) == []
