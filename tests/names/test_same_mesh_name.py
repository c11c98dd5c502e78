"""Two projects with the same mesh name (two folders called `app`): neither takes the other's names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devmesh.names import hostsfile
from devmesh.names.changes import NamesError, apply, plan_install, plan_uninstall
from devmesh.names.plan import NameSet, names_for


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "one" / "app", tmp_path / "two" / "app"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    return first, second


def app(folder: Path, *hosts: str, domain: str = "app.test") -> NameSet:
    return names_for("app", domain, {host: [host] for host in hosts}, project=str(folder))


def install(names: NameSet, hosts: Path, env: dict[str, str] | None = None) -> None:
    apply(plan_install(names, hosts_path=hosts, platform="linux", env=env or {}))


def test_installing_over_another_projects_names_is_refused(
    tmp_path: Path, folders: tuple[Path, Path]
) -> None:
    first, second = folders
    hosts = tmp_path / "hosts"
    install(app(first, "api", "web"), hosts)
    installed = hosts.read_bytes()

    with pytest.raises(NamesError) as raised:
        plan_install(app(second, "admin"), hosts_path=hosts, platform="linux", env={})

    message = str(raised.value)
    assert f"for another project, {first}, with other names (app.test, api.app.test, web.app.test)" in message
    assert "devmesh uninstall --mesh app" in message and "Nothing was changed" in message
    assert hosts.read_bytes() == installed


def test_the_same_names_from_another_project_are_up_to_date(
    tmp_path: Path, folders: tuple[Path, Path]
) -> None:
    first, second = folders
    hosts = tmp_path / "hosts"
    install(app(first, "api"), hosts)

    assert plan_install(app(second, "api"), hosts_path=hosts, platform="linux", env={}).pending == []


def test_a_block_whose_project_folder_is_gone_or_unrecorded_is_taken_over(
    tmp_path: Path, folders: tuple[Path, Path]
) -> None:
    first, second = folders
    hosts = tmp_path / "hosts"
    install(app(first, "api"), hosts)
    first.rmdir()  # the project moved or was deleted

    install(app(second, "admin"), hosts)
    (block,) = hostsfile.find_blocks(hosts.read_text())
    assert block.project == str(second) and "admin.app.test" in block.body[0]

    install(names_for("app", "app.test", {"old": ["old"]}), hosts)  # no project: an older devmesh
    install(app(second, "admin"), hosts)
    assert hostsfile.find_blocks(hosts.read_text())[0].project == str(second)


def test_uninstall_in_a_project_leaves_another_projects_block(
    tmp_path: Path, folders: tuple[Path, Path]
) -> None:
    first, second = folders
    hosts = tmp_path / "hosts"
    install(app(first, "api"), hosts)

    plan = plan_uninstall("app", hosts_path=hosts, platform="linux", env={}, project=str(second))

    assert plan.pending == []
    assert plan.notes == [f"kept the hosts-file block of mesh 'app': it is the project's in {first}"]
    apply(plan_uninstall("app", hosts_path=hosts, platform="linux", env={}, project=str(first)))
    assert hosts.read_bytes() == b""
    install(app(first, "api"), hosts)
    apply(plan_uninstall("app", hosts_path=hosts, platform="linux", env={}))  # --mesh app: any project's
    assert hosts.read_bytes() == b""


def test_another_projects_dns_snippet_is_not_replaced(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    first, second = folders
    snippets = tmp_path / "dnsmasq.d"
    snippets.mkdir()
    env = {"DEVMESH_DNSMASQ_DIR": str(snippets)}
    hosts = tmp_path / "hosts"
    apply(
        plan_install(
            app(first, "*.t", domain="one.test"), method="dns", hosts_path=hosts, platform="linux", env=env
        )
    )

    with pytest.raises(NamesError, match=re.escape(f"of another project, {first}, with other content")):
        plan_install(
            app(second, "*.t", domain="two.test"), method="dns", hosts_path=hosts, platform="linux", env=env
        )
    same = app(second, "*.t", domain="one.test")
    assert plan_install(same, method="dns", hosts_path=hosts, platform="linux", env=env).pending == []
    assert f"# project: {first}" in (snippets / "devmesh-app.conf").read_text()
