from __future__ import annotations

import pytest

from devmesh import const
from devmesh.supervisor.runner import backoff_delay_s, exit_reason


def test_backoff_doubles_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [backoff_delay_s(n) for n in range(5)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert backoff_delay_s(50) == const.RESTART_BACKOFF_MAX_S
    monkeypatch.setattr(const, "RESTART_BACKOFF_MAX_S", 1.5)
    assert backoff_delay_s(4) == 1.5


def test_exit_reasons_say_what_happened() -> None:
    assert exit_reason(3) == "exited with code 3"
    assert exit_reason(-9) == "killed by signal 9"
    assert "command not found" in exit_reason(127)
