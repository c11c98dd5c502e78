"""Wildcard names: the dnsmasq snippet and the per-platform resolver files, all in temp folders."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from devmesh.names import resolver
from devmesh.names.changes import NamesError, apply, plan_install, plan_uninstall
from devmesh.names.plan import names_for
from devmesh.names.resolver import owned_files, owner_line, resolver_plan

TENANTS = names_for("shop", "shop.test", {"api": ["api"], "tenants": ["*.tenant"]})


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    folders = {
        "DEVMESH_DNSMASQ_DIR": tmp_path / "dnsmasq.d",
        "DEVMESH_RESOLVED_DIR": tmp_path / "resolved.conf.d",
        "DEVMESH_RESOLVER_DIR": tmp_path / "resolver",
    }
    for name in ("DEVMESH_DNSMASQ_DIR", "DEVMESH_RESOLVED_DIR"):
        folders[name].mkdir()
    return {name: str(path) for name, path in folders.items()}


def test_linux_with_resolved_gets_the_snippet_and_per_link_steps_but_no_global_dns(
    dirs: dict[str, str],
) -> None:
    plan = resolver_plan(TENANTS, platform="linux", env=dirs)

    assert plan.missing == ""
    (dnsmasq,) = plan.files  # nothing for systemd-resolved: a global DNS= would take every lookup
    assert dnsmasq.path == Path(dirs["DEVMESH_DNSMASQ_DIR"]) / "devmesh-shop.conf"
    lines = dnsmasq.text.splitlines()
    assert lines[0] == owner_line("shop")
    assert "address=/shop.test/127.0.0.1" in lines
    # Bound to loopback alone: beside resolved's stub on 127.0.0.53:53 a wildcard bind fails.
    assert "listen-address=127.0.0.1" in lines and "bind-interfaces" in lines
    steps = "\n".join(plan.manual)
    assert "sudo ip link add devmesh0 type dummy" in steps
    assert "sudo resolvectl dns devmesh0 127.0.0.1" in steps
    assert "sudo resolvectl domain devmesh0 '~shop.test' " in steps
    assert "sudo resolvectl default-route devmesh0 false" in steps
    assert "  DNSDefaultRoute=no" in plan.manual  # the networkd variant, kept across reboots
    (domain_line,) = [line for line in plan.manual if "resolvectl domain" in line]
    # Quoted: a shell would expand an unquoted ~shop.test as the home folder of a user "shop.test".
    assert shlex.split(domain_line.split("(")[0]) == [
        "sudo",
        "resolvectl",
        "domain",
        "devmesh0",
        "~shop.test",
    ]
    assert "DNS=127.0.0.1\n" not in dnsmasq.text


def test_the_link_steps_list_every_devmesh_domain(tmp_path: Path, dirs: dict[str, str]) -> None:
    # `resolvectl domain` replaces the link's list: the command must name the other meshes' domains too.
    blog = names_for("blog", "blog.test", {"posts": ["*.posts"]})
    apply(plan_install(blog, hosts_path=tmp_path / "hosts", platform="linux", env=dirs))

    plan = plan_install(TENANTS, hosts_path=tmp_path / "hosts", platform="linux", env=dirs)

    assert "sudo resolvectl domain devmesh0 '~blog.test' '~shop.test' " in "\n".join(plan.manual)
    apply(plan)
    undo = plan_uninstall("shop", hosts_path=tmp_path / "hosts", platform="linux", env=dirs)
    assert "sudo resolvectl domain devmesh0 '~blog.test'" in "\n".join(undo.manual)
    apply(undo)
    last = plan_uninstall("blog", hosts_path=tmp_path / "hosts", platform="linux", env=dirs)
    assert "sudo ip link delete devmesh0" in "\n".join(last.manual)
    assert [change.then for change in last.pending[1:]] == ["sudo systemctl restart dnsmasq"]


def test_a_global_resolved_drop_in_an_older_devmesh_wrote_is_deleted(
    tmp_path: Path, dirs: dict[str, str]
) -> None:
    old = Path(dirs["DEVMESH_RESOLVED_DIR"]) / "devmesh-shop.conf"
    old.write_text(f"{owner_line('shop')}\n[Resolve]\nDNS=127.0.0.1\nDomains=~shop.test\n")

    plan = plan_install(TENANTS, hosts_path=tmp_path / "hosts", platform="linux", env=dirs)

    (deletion,) = [change for change in plan.pending if change.path == old]
    assert deletion.verb == "delete"
    assert deletion.then == "sudo systemctl restart systemd-resolved"
    apply(plan)
    assert not old.exists()


def test_macos_gets_an_etc_resolver_file_for_the_domain(dirs: dict[str, str]) -> None:
    plan = resolver_plan(TENANTS, platform="darwin", env=dirs)

    _dnsmasq, per_domain = plan.files
    assert per_domain.path == Path(dirs["DEVMESH_RESOLVER_DIR"]) / "shop.test"
    assert per_domain.text.splitlines()[-1] == "nameserver 127.0.0.1"
    assert per_domain.make_folder  # /etc/resolver does not exist on a fresh Mac


def test_without_dnsmasq_or_on_windows_it_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(resolver._DNSMASQ_DIRS, "linux", [str(tmp_path / "no-dnsmasq.d")])
    linux = resolver_plan(TENANTS, platform="linux", env={})
    assert linux.files == ()
    assert "install it (sudo apt install dnsmasq" in linux.missing
    assert "DEVMESH_DNSMASQ_DIR" in linux.missing

    windows = resolver_plan(TENANTS, platform="win32", env={})
    assert windows.files == () and "*.shop.test" in windows.missing


def test_auto_with_wildcards_writes_the_hosts_block_and_the_snippets(
    tmp_path: Path, dirs: dict[str, str]
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")

    plan = plan_install(TENANTS, hosts_path=hosts, platform="darwin", env=dirs)
    assert [change.verb for change in plan.changes] == ["update", "create", "create"]
    assert plan.unresolved == ""
    apply(plan)

    assert b"api.shop.test" in hosts.read_bytes()
    assert (Path(dirs["DEVMESH_RESOLVER_DIR"]) / "shop.test").is_file()
    assert plan_install(TENANTS, hosts_path=hosts, platform="darwin", env=dirs).pending == []

    # The domain changes: the old per-domain file goes, the new one comes.
    moved = names_for("shop", "shop2.test", {"tenants": ["*.tenant"]})
    apply(plan_install(moved, hosts_path=hosts, platform="darwin", env=dirs))
    assert sorted(path.name for path in Path(dirs["DEVMESH_RESOLVER_DIR"]).iterdir()) == ["shop2.test"]

    apply(plan_uninstall("shop", hosts_path=hosts, platform="darwin", env=dirs))
    assert hosts.read_bytes() == b"127.0.0.1 localhost\n"
    assert owned_files(None, platform="darwin", env=dirs) == []


def test_the_hosts_method_with_wildcards_says_they_stay_unresolved(
    tmp_path: Path, dirs: dict[str, str]
) -> None:
    plan = plan_install(TENANTS, method="hosts", hosts_path=tmp_path / "hosts", platform="linux", env=dirs)
    assert "*.tenant.shop.test: a hosts file cannot hold wildcards" in plan.unresolved


def test_the_dns_method_without_dnsmasq_is_refused_before_any_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(resolver._DNSMASQ_DIRS, "linux", [str(tmp_path / "no-dnsmasq.d")])
    hosts = tmp_path / "hosts"
    apply(plan_install(TENANTS, method="hosts", hosts_path=hosts, platform="linux", env={}))
    installed = hosts.read_bytes()

    with pytest.raises(NamesError, match=r"--method dns cannot be used here: wildcard names need dnsmasq"):
        plan_install(TENANTS, method="dns", hosts_path=hosts, platform="linux", env={})
    with pytest.raises(NamesError, match="--method dns cannot be used here: Windows"):
        plan_install(TENANTS, method="dns", hosts_path=hosts, platform="win32", env={})
    assert hosts.read_bytes() == installed  # the working block stays


def test_a_per_domain_file_another_mesh_wrote_names_that_mesh(tmp_path: Path, dirs: dict[str, str]) -> None:
    other = names_for("other", "shop.test", {"x": ["*.x"]})
    apply(plan_install(other, hosts_path=tmp_path / "hosts", platform="darwin", env=dirs))

    with pytest.raises(NamesError, match="written by devmesh for mesh 'other'") as raised:
        plan_install(TENANTS, hosts_path=tmp_path / "hosts", platform="darwin", env=dirs)
    assert "did not write" not in str(raised.value)
    assert "devmesh uninstall --mesh other" in str(raised.value)


def test_a_file_devmesh_did_not_write_is_never_overwritten(tmp_path: Path, dirs: dict[str, str]) -> None:
    theirs = Path(dirs["DEVMESH_RESOLVER_DIR"])
    theirs.mkdir()
    (theirs / "shop.test").write_text("nameserver 10.0.0.53\n")

    with pytest.raises(NamesError, match="devmesh did not write it"):
        plan_install(TENANTS, hosts_path=tmp_path / "hosts", platform="darwin", env=dirs)
    assert (theirs / "shop.test").read_text() == "nameserver 10.0.0.53\n"


def test_uninstall_all_takes_every_meshs_files_and_only_devmeshs(
    tmp_path: Path, dirs: dict[str, str]
) -> None:
    hosts = tmp_path / "hosts"
    blog = names_for("blog", "blog.test", {"posts": ["*.posts"]})
    for names in (TENANTS, blog):
        apply(plan_install(names, hosts_path=hosts, platform="linux", env=dirs))
    unrelated = Path(dirs["DEVMESH_DNSMASQ_DIR"]) / "home-lab.conf"
    unrelated.write_text("address=/lab/10.0.0.2\n")

    apply(plan_uninstall(None, hosts_path=hosts, platform="linux", env=dirs))

    assert hosts.read_bytes() == b""
    assert sorted(p.name for p in Path(dirs["DEVMESH_DNSMASQ_DIR"]).iterdir()) == ["home-lab.conf"]
    assert list(Path(dirs["DEVMESH_RESOLVED_DIR"]).iterdir()) == []
