from __future__ import annotations

import io
from pathlib import Path

from devmesh.supervisor.logs import LogSink, log_path, merged_tail, tail_lines


def test_lines_go_to_the_terminal_prefixed_and_to_a_file(tmp_path: Path) -> None:
    terminal = io.StringIO()
    sink = LogSink(tmp_path, terminal=terminal, colour=False)
    sink.register("api")
    sink.register("payments")
    sink.line("api", "hello\n")
    sink.agent("api started")
    sink.close()
    assert terminal.getvalue().splitlines() == ["api      | hello", "devmesh  | api started"]
    assert log_path(tmp_path, "api").read_text().split(" ", 1)[1] == "hello\n"


def test_colour_prefixes(tmp_path: Path) -> None:
    terminal = io.StringIO()
    sink = LogSink(tmp_path, terminal=terminal, colour=True)
    sink.register("api")
    sink.line("api", "x")
    sink.close()
    assert terminal.getvalue().startswith("\x1b[36m")


def test_tail_reads_the_end_of_large_files(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {n}\n" for n in range(50_000)))
    assert tail_lines(path, 3) == ["line 49997", "line 49998", "line 49999"]
    assert tail_lines(tmp_path / "missing.log", 3) == []


def test_merged_tail_orders_services_by_time(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("2026-01-01T00:00:01.000000Z a1\n2026-01-01T00:00:03.000000Z a3\n")
    (tmp_path / "b.log").write_text("2026-01-01T00:00:02.000000Z b2\n")
    entries = list(merged_tail({"a": tmp_path / "a.log", "b": tmp_path / "b.log"}, 10))
    assert [(name, text) for _, name, text in entries] == [("a", "a1"), ("b", "b2"), ("a", "a3")]
