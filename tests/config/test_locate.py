from __future__ import annotations

from devmesh.config.locate import find_line, toml_key_lines, yaml_key_lines


def test_toml_tables_keys_and_inline_tables() -> None:
    lines = toml_key_lines(
        '[mesh]\nname = "x"  # comment\n\n[services."my-api"]\ncommand = "a = b"\n'
        'health = { http = "/h", interval = "2s" }\nenv.FOO = "1"\nnotes = """\nkey = "not a key"\n"""\n'
    )
    assert lines[("mesh", "name")] == 2
    assert lines[("services", "my-api")] == 4
    assert lines[("services", "my-api", "command")] == 5
    assert lines[("services", "my-api", "health", "interval")] == 6
    assert lines[("services", "my-api", "env", "FOO")] == 7
    assert ("services", "my-api", "key") not in lines


def test_find_line_falls_back_to_the_nearest_parent() -> None:
    lines = toml_key_lines("[services.api]\ncommand = 'x'\n")
    assert find_line(lines, ("services", "api", "health", "http")) == 1
    assert find_line(lines, ("nowhere",)) is None


def test_yaml_lines() -> None:
    lines = yaml_key_lines("services:\n  api:\n    command: x\n    hosts:\n      - a\n")
    assert lines[("services", "api", "command")] == 3
    assert lines[("services", "api", "hosts", "0")] == 5
