"""The control server's token and lines, reading it over a socket, and the error log from a mark."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from devmesh.dataplane.control import CONTROL_PATH, ErrorLog, Token, control_server, live_token


def test_a_token_is_safe_inside_an_nginx_string() -> None:
    token = Token("ab12.3", "0123456789abcdef", 'rev "x"; $y {z}')
    assert token.text() == "ab12.3 0123456789abcdef rev__x____y__z_"
    lines = control_server(4567, token)
    assert "    listen 127.0.0.1:4567;" in lines
    assert f"    location = {CONTROL_PATH} {{" in lines
    assert '        return 200 "ab12.3 0123456789abcdef rev__x____y__z_\\n";' in lines


def _serve_once(answer: bytes) -> int:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def run() -> None:
        connection, _ = server.accept()
        with connection, server:
            connection.recv(4096)
            connection.sendall(answer)

    threading.Thread(target=run, daemon=True).start()
    return int(server.getsockname()[1])


def test_live_token_reads_a_200_body_and_nothing_else() -> None:
    ok = _serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab.1 h r\n")
    assert live_token(ok) == "ab.1 h r"
    refused = _serve_once(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert live_token(refused) is None


def test_live_token_is_none_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert live_token(port) is None


def test_the_error_log_is_read_from_a_mark(tmp_path: Path) -> None:
    log = ErrorLog(tmp_path / "error.log")
    assert log.mark() == 0 and log.since(0) == []
    log.path.write_text("2026/01/01 [warn] 1#1: old\n", encoding="utf-8")
    mark = log.mark()
    with log.path.open("a", encoding="utf-8") as handle:
        handle.write("2026/01/01 [emerg] 1#1: bind() failed (98: Address in use)\n[notice] fine\n")
    assert log.since(mark) == ["2026/01/01 [emerg] 1#1: bind() failed (98: Address in use)", "[notice] fine"]
    assert log.failures_since(mark) == ["2026/01/01 [emerg] 1#1: bind() failed (98: Address in use)"]
    log.path.write_text("[crit] after a rotation\n", encoding="utf-8")  # shorter than the mark: read it all
    assert log.failures_since(mark) == ["[crit] after a rotation"]
