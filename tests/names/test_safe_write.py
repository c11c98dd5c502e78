"""Writing the hosts file: atomic with a backup, the in-place fallback for bind mounts, interruptions."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devmesh.names import files
from devmesh.names.changes import ApplyError, NamesError, apply, plan_install, plan_uninstall
from devmesh.names.plan import names_for

SHOP = names_for("shop", "shop.test", {"api": ["api"], "web": ["web"]})
ORIGINAL = b"127.0.0.1 localhost\n# mine\n10.0.0.5 nas.lan\n"


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "hosts"
    path.write_bytes(ORIGINAL)
    path.chmod(0o644)
    return path


def install(hosts: Path, **kwargs: object) -> list[str]:
    plan = plan_install(SHOP, hosts_path=hosts, platform="linux", env={})
    return [done.how for done in apply(plan, **kwargs)]  # type: ignore[arg-type]


def test_install_replaces_the_file_atomically_and_keeps_a_backup_and_the_mode(hosts: Path) -> None:
    hosts.chmod(0o640)
    inode = hosts.stat().st_ino

    assert install(hosts) == ["replaced"]

    assert hosts.read_bytes().startswith(ORIGINAL)
    assert b"api.shop.test" in hosts.read_bytes()
    assert hosts.stat().st_ino != inode  # a new file took its place: readers saw old or new, never half
    assert hosts.stat().st_mode & 0o777 == 0o640
    assert files.backup_path(hosts).read_bytes() == ORIGINAL
    assert files.temp_files(hosts) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_the_owner_is_kept(hosts: Path) -> None:
    os.chown(hosts, 65534, 65534)
    install(hosts)
    assert (hosts.stat().st_uid, hosts.stat().st_gid) == (65534, 65534)


def test_a_second_install_writes_nothing_and_keeps_the_backup(hosts: Path) -> None:
    install(hosts)
    backup = files.backup_path(hosts)
    backup.write_bytes(b"sentinel")
    installed = hosts.read_bytes()

    plan = plan_install(SHOP, hosts_path=hosts, platform="linux", env={})

    assert plan.pending == []
    assert apply(plan) == []
    assert hosts.read_bytes() == installed
    assert backup.read_bytes() == b"sentinel"


def test_uninstall_restores_the_original_bytes_and_backs_up_the_installed_file(hosts: Path) -> None:
    install(hosts)
    installed = hosts.read_bytes()

    apply(plan_uninstall("shop", hosts_path=hosts, platform="linux", env={}))

    assert hosts.read_bytes() == ORIGINAL
    assert files.backup_path(hosts).read_bytes() == installed
    assert plan_uninstall("shop", hosts_path=hosts, platform="linux", env={}).pending == []


def test_when_renaming_over_the_file_is_busy_it_is_rewritten_in_place(hosts: Path) -> None:
    # What /etc/hosts does inside Docker: a bind-mounted file cannot be renamed over (EBUSY).
    def busy(source: Path, target: Path) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", str(target))

    inode = hosts.stat().st_ino

    assert install(hosts, replace=busy) == ["rewritten in place"]

    assert hosts.stat().st_ino == inode
    assert hosts.read_bytes().startswith(ORIGINAL)
    assert b"api.shop.test" in hosts.read_bytes()
    assert files.backup_path(hosts).read_bytes() == ORIGINAL
    assert files.temp_files(hosts) == []
    # Shorter content after an in-place rewrite is truncated, not left with the old tail.
    apply(plan_uninstall("shop", hosts_path=hosts, platform="linux", env={}), replace=busy)
    assert hosts.read_bytes() == ORIGINAL


def test_any_other_failure_to_replace_leaves_the_original_and_no_temp_file(hosts: Path) -> None:
    def broken(source: Path, target: Path) -> None:
        raise OSError(errno.EIO, "Input/output error", str(target))

    with pytest.raises(ApplyError, match="Input/output error") as raised:
        install(hosts, replace=broken)

    assert f"{hosts} is unchanged" in str(raised.value)

    assert hosts.read_bytes() == ORIGINAL
    assert files.temp_files(hosts) == []


KILLED_BEFORE_RENAME = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from devmesh.names.changes import apply, plan_install
    from devmesh.names.plan import names_for

    def die(source, target):
        os.kill(os.getpid(), signal.SIGKILL)  # the temp file is complete; the rename never happens

    names = names_for("shop", "shop.test", {"api": ["api"]})
    apply(plan_install(names, hosts_path=Path(sys.argv[1]), platform="linux", env={}), replace=die)
    """
)


def test_a_process_killed_while_writing_leaves_the_hosts_file_intact(hosts: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_RENAME, str(hosts)], capture_output=True, timeout=30
    )

    assert result.returncode == -signal.SIGKILL
    assert hosts.read_bytes() == ORIGINAL
    leftovers = files.temp_files(hosts)
    assert len(leftovers) == 1 and b"api.shop.test" in leftovers[0].read_bytes()
    # The next run cleans up after the killed one.
    install(hosts)
    assert files.temp_files(hosts) == []


TOGGLE_FOREVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from devmesh.names.changes import ApplyError, NamesError, apply, plan_install, plan_uninstall
    from devmesh.names.plan import names_for

    hosts = Path(sys.argv[1])
    names = names_for("shop", "shop.test", {f"s{i}": [f"s{i}"] for i in range(400)})
    print("ready", flush=True)
    for _ in range(100_000):
        apply(plan_install(names, hosts_path=hosts, platform="linux", env={}))
        apply(plan_uninstall("shop", hosts_path=hosts, platform="linux", env={}))
    """
)


@pytest.mark.timeout(120)
def test_killing_the_writer_at_random_moments_never_leaves_a_partial_file(hosts: Path) -> None:
    installed = None
    rng = random.Random(7)
    runs = 0
    # At least 8 kills, and on until both outcomes were seen: a writer that never wrote (or never got
    # as far as a whole install) must fail this test, not pass it by leaving ORIGINAL every time.
    while runs < 8 or (installed is None and runs < 40):
        runs += 1
        writer = subprocess.Popen(
            [sys.executable, "-c", TOGGLE_FOREVER, str(hosts)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "ready\n"
            deadline = time.monotonic() + rng.uniform(0.05, 0.4)
            while time.monotonic() < deadline:  # readers during the writes see a whole file every time
                content = hosts.read_bytes()
                assert content == ORIGINAL or (content.startswith(ORIGINAL) and content.endswith(b"<<<\n"))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=10)
            if writer.stdout is not None:
                writer.stdout.close()
        content = hosts.read_bytes()
        assert content == ORIGINAL or content.endswith(b"# <<< devmesh shop <<<\n"), content[-200:]
        if content != ORIGINAL:
            installed = content
    assert installed is not None, f"in {runs} runs no kill left the installed file: the writer never wrote"
    assert installed.count(b">>> devmesh shop") == 1
    assert b"s399.shop.test" in installed  # the whole block, not a prefix of it
    files.write_file(hosts, ORIGINAL)  # cleans the temp files the killed writers left
    assert files.temp_files(hosts) == []


def test_write_problem_names_a_missing_folder(tmp_path: Path) -> None:
    problem = files.write_problem(tmp_path / "missing" / "hosts")
    assert problem is not None
    assert problem.message == f"{tmp_path / 'missing'} does not exist"
    assert not problem.needs_root
    assert files.write_problem(tmp_path / "hosts") is None


def test_a_symlinked_hosts_file_stays_a_symlink_and_its_target_changes(hosts: Path) -> None:
    link = hosts.with_name("hosts-link")
    link.symlink_to(hosts)

    apply(plan_install(SHOP, hosts_path=link, platform="linux", env={}))

    assert link.is_symlink()
    assert b"api.shop.test" in hosts.read_bytes()
    assert files.backup_path(hosts).read_bytes() == ORIGINAL


def test_a_temp_file_swapped_for_a_link_is_never_followed(
    hosts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user who may write the folder (Homebrew's dnsmasq.d) swaps devmesh's temp file for a link to a
    # file of their choosing between two calls: a chmod/chown by path would then act on that file.
    victim = tmp_path / "victim"
    victim.write_bytes(b"secret\n")
    victim.chmod(0o600)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if is_root:
        os.chown(hosts, 65534, 65534)
    real_fsync = os.fsync

    def swap_then_fsync(descriptor: int) -> None:
        for temporary in files.temp_files(hosts):
            if not temporary.is_symlink():
                temporary.unlink()
                temporary.symlink_to(victim)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", swap_then_fsync)
    with pytest.raises(ApplyError, match="replaced by another while devmesh wrote it"):
        install(hosts)
    monkeypatch.undo()

    assert victim.stat().st_mode & 0o777 == 0o600
    assert victim.read_bytes() == b"secret\n"
    if is_root:
        assert victim.stat().st_uid == 0
    assert not hosts.is_symlink()
    assert hosts.read_bytes() == ORIGINAL
    assert files.temp_files(hosts) == []


def test_as_root_a_folder_another_user_controls_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dnsmasq.d"
    folder.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
    monkeypatch.setattr(files, "_is_root", lambda: True)
    target = folder / "devmesh-shop.conf"

    problem = files.write_problem(target)

    assert problem is not None and not problem.needs_root
    assert problem.message.startswith(f"{folder} belongs to ")
    assert "not root" in problem.message and f"sudo chown root {folder}" in problem.message
    with pytest.raises(PermissionError, match="does not write into a folder another user controls"):
        files.write_file(target, b"address=/shop.test/127.0.0.1\n")
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_as_root_a_folder_every_user_may_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    problem = files.write_problem(folder / "hosts")
    assert problem is not None and "writable by every user" in problem.message
    folder.chmod(0o1777)  # like /tmp: others cannot rename or delete root's files there
    assert files.write_problem(folder / "hosts") is None


def test_a_failed_write_reports_what_was_applied_and_what_failed(tmp_path: Path, hosts: Path) -> None:
    snippets = tmp_path / "dnsmasq.d"
    snippets.mkdir()
    env = {"DEVMESH_DNSMASQ_DIR": str(snippets)}
    wildcard = names_for("shop", "shop.test", {"api": ["api"], "tenants": ["*.tenant"]})
    plan = plan_install(wildcard, hosts_path=hosts, platform="linux", env=env)
    snippet = snippets / "devmesh-shop.conf"

    def fails_for_the_snippet(source: Path, target: Path) -> None:
        if target == snippet:
            raise OSError(errno.EIO, "Input/output error", str(target))
        os.replace(source, target)

    with pytest.raises(ApplyError) as raised:
        apply(plan, replace=fails_for_the_snippet)

    message = str(raised.value)
    assert f"cannot write {snippet}: Input/output error" in message
    assert f"{snippet} is unchanged" in message
    assert f"already applied: replaced {hosts} (previous content: {files.backup_path(hosts)})" in message
    assert "backup beside it" not in message
    assert [done.change.path for done in raised.value.done] == [hosts]
    assert raised.value.failed.path == snippet
    assert not snippet.exists()


def test_an_interrupted_in_place_rewrite_says_where_the_previous_content_is(
    hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(source: Path, target: Path) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", str(target))

    inode = hosts.stat().st_ino
    real_fsync = os.fsync

    def fails_for_the_hosts_file(descriptor: int) -> None:
        if os.fstat(descriptor).st_ino == inode:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fails_for_the_hosts_file)
    with pytest.raises(ApplyError) as raised:
        install(hosts, replace=busy)
    monkeypatch.undo()

    backup = files.backup_path(hosts)
    assert "may be half-written" in str(raised.value)
    assert f"its previous content is in {backup} (put it back: cp {backup} {hosts})" in str(raised.value)
    assert backup.read_bytes() == ORIGINAL


def test_a_cut_block_error_points_at_the_backup(hosts: Path) -> None:
    install(hosts)
    installed = hosts.read_bytes()
    hosts.write_bytes(installed[: installed.index(b"# <<< devmesh shop")])  # what a cut rewrite leaves

    hint = f"before devmesh's last change is in {files.backup_path(hosts)}"
    with pytest.raises(NamesError, match="never ends") as raised:
        plan_install(SHOP, hosts_path=hosts, platform="linux", env={})
    assert hint in str(raised.value)
    with pytest.raises(NamesError, match="never ends") as raised:
        plan_uninstall("shop", hosts_path=hosts, platform="linux", env={})
    assert hint in str(raised.value)


def test_as_root_deleting_from_a_folder_another_user_controls_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dnsmasq.d"
    folder.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
    monkeypatch.setattr(files, "_is_root", lambda: True)
    assert files.write_problem(folder / "devmesh-shop.conf", deleting=True) is None  # uninstall can go on
