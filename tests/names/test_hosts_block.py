"""devmesh's marked block in a hosts file, as text: added, updated in place, removed byte for byte."""

from __future__ import annotations

import pytest

from devmesh.names.hostsfile import (
    ADDED_LINE_BREAK_NOTE,
    HostsFileError,
    begin_marker,
    decode,
    encode,
    end_marker,
    find_blocks,
    meshes_in,
    with_block,
    without_blocks,
)
from devmesh.names.plan import names_for

SHOP = names_for("shop", "shop.test", {"api": ["api"], "web": ["web", "www"]})
USER_HOSTS = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost\n\n# my NAS\n10.0.0.5 nas.lan  # keep\n"

ORIGINALS = {
    "typical": USER_HOSTS.encode(),
    "empty": b"",
    "no final line break": b"127.0.0.1 localhost\n10.0.0.5 nas",
    "windows line endings": b"127.0.0.1 localhost\r\n# comment\r\n",
    "not utf-8": b"127.0.0.1 localhost\n10.0.0.9 caf\xe9.lan\n",
    "blank lines at the end": b"127.0.0.1 localhost\n\n\n",
}


def test_the_block_goes_after_the_users_lines_which_stay_byte_for_byte() -> None:
    text = with_block(USER_HOSTS, SHOP)

    assert text.startswith(USER_HOSTS)
    assert text[len(USER_HOSTS) :] == (
        f"{begin_marker('shop')}\n127.0.0.1 shop.test api.shop.test web.shop.test www.shop.test\n"
        f"{end_marker('shop')}\n"
    )
    assert (
        begin_marker("shop") == "# >>> devmesh shop (managed by devmesh; remove with devmesh uninstall) >>>"
    )


def test_putting_the_block_in_twice_changes_nothing() -> None:
    once = with_block(USER_HOSTS, SHOP)
    assert with_block(once, SHOP) == once


@pytest.mark.parametrize("original", ORIGINALS.values(), ids=ORIGINALS.keys())
def test_removing_the_block_gives_back_the_original_bytes(original: bytes) -> None:
    installed = encode(with_block(decode(original), SHOP))
    assert installed != original
    assert encode(without_blocks(decode(installed), "shop")) == original


def test_a_missing_final_line_break_is_added_and_noted_inside_the_block() -> None:
    text = with_block("10.0.0.5 nas", SHOP)
    assert text.startswith(f"10.0.0.5 nas\n{begin_marker('shop')}\n{ADDED_LINE_BREAK_NOTE}\n")
    assert find_blocks(text)[0].added_line_break
    # Updating keeps the note, so that removal still restores the file exactly.
    more = names_for("shop", "shop.test", {"api": ["api"], "admin": ["admin"]})
    assert without_blocks(with_block(text, more), "shop") == "10.0.0.5 nas"


def test_windows_line_endings_are_used_for_the_block() -> None:
    text = with_block("127.0.0.1 localhost\r\n", SHOP)
    assert text.count("\r\n") == 4
    assert "\n" not in text.replace("\r\n", "")


def test_an_update_replaces_the_block_where_it_is_and_keeps_lines_after_it() -> None:
    installed = with_block(USER_HOSTS, SHOP) + "10.0.0.7 printer.lan\n"
    fewer = names_for("shop", "shop.test", {"api": ["api"]})

    updated = with_block(installed, fewer)

    assert updated == (
        f"{USER_HOSTS}{begin_marker('shop')}\n127.0.0.1 shop.test api.shop.test\n{end_marker('shop')}\n"
        "10.0.0.7 printer.lan\n"
    )


def test_each_mesh_has_its_own_block_and_removal_takes_only_its_own() -> None:
    other = names_for("blog", "blog.test", {"site": ["site"]})
    both = with_block(with_block(USER_HOSTS, SHOP), other)
    assert meshes_in(both) == ["shop", "blog"]

    only_blog = without_blocks(both, "shop")
    assert meshes_in(only_blog) == ["blog"]
    assert only_blog == with_block(USER_HOSTS, other)
    assert without_blocks(both, None) == USER_HOSTS
    assert without_blocks(USER_HOSTS, "shop") == USER_HOSTS


def test_two_blocks_of_one_mesh_become_one() -> None:
    block = with_block("", SHOP)
    doubled = USER_HOSTS + block + "10.0.0.7 printer.lan\n" + block
    assert with_block(doubled, SHOP) == USER_HOSTS + block + "10.0.0.7 printer.lan\n"


def test_ipv6_and_long_name_lists() -> None:
    many = names_for("big", "big.test", {f"s{i}": [f"s{i}"] for i in range(10)}, ipv6=True)
    lines = with_block("", many).splitlines()
    address_lines = lines[1:-1]
    assert [line.split()[0] for line in address_lines] == ["127.0.0.1", "127.0.0.1", "::1", "::1"]
    assert all(len(line.split()) <= 9 for line in address_lines)  # the address and at most 8 names
    assert sorted(name for line in address_lines[:2] for name in line.split()[1:]) == sorted(many.plain)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{begin_marker('shop')}\n127.0.0.1 a.test\n", "starts on line 1 never ends"),
        (f"a\n{end_marker('shop')}\n", "line 2 ends a devmesh block for 'shop' that never started"),
        (f"{begin_marker('shop')}\n{begin_marker('blog')}\n", "has no end line before line 2"),
    ],
)
def test_a_block_edited_by_hand_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(HostsFileError, match=message):
        with_block(text, SHOP, where="/etc/hosts")
    with pytest.raises(HostsFileError, match="/etc/hosts"):
        without_blocks(text, None, where="/etc/hosts")


def test_the_first_line_records_the_project_folder_and_older_blocks_still_parse() -> None:
    here = names_for("app", "app.test", {"api": ["api"]}, project="/home/me/work/app (old) >>> x")
    text = with_block(USER_HOSTS, here)
    (block,) = find_blocks(text)
    assert block.project == "/home/me/work/app (old) >>> x"
    assert block.body == ("127.0.0.1 app.test api.app.test",)
    assert text.splitlines()[5] == (
        "# >>> devmesh app (managed by devmesh; remove with devmesh uninstall; "
        "project /home/me/work/app (old) >>> x) >>>"
    )
    older = with_block(USER_HOSTS, names_for("app", "app.test", {"api": ["api"]}))
    assert find_blocks(older)[0].project == ""
    assert names_for("app", "app.test", {}, project="/a\nb").project == "/a?b"  # one line, always


def test_another_projects_block_with_the_same_names_is_left_as_it_is() -> None:
    first = names_for("app", "app.test", {"api": ["api"]}, project="/one/app")
    second = names_for("app", "app.test", {"api": ["api"]}, project="/two/app")
    text = with_block(USER_HOSTS, first)
    assert with_block(text, second) == text  # no back-and-forth rewrite of the marker
    assert without_blocks(text, "app", keep=lambda block: block.project == "/one/app") == text
    assert without_blocks(text, "app") == USER_HOSTS
