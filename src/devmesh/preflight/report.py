"""The results of `devmesh check`: one `CheckResult` per check (one JUnit testcase), in a `Report`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

PASSED, FAILED, SKIPPED, ERROR = "passed", "failed", "skipped", "error"


@dataclass
class CheckResult:
    """One check, one JUnit testcase."""

    classname: str  # devmesh.config | ports | agent | health | smoke | versions
    name: str
    outcome: str = PASSED
    message: str = ""  # what is wrong (a failure's message attribute), or what passed
    hint: str = ""  # what to do about it
    details: str = ""  # more: the config's problems, a response body
    note: str = ""  # a pass with a remark (a 404 from the service): the testcase's system-out
    time_s: float = 0.0

    def text(self) -> str:
        """The message, the details and the hint, as a failure's text and the terminal show them."""
        return "\n".join(
            part for part in (self.message, self.details, self.hint and f"What to do: {self.hint}") if part
        )

    def as_dict(self) -> dict[str, Any]:
        """The result as `devmesh check --json` prints it."""
        return {
            "check": self.classname,
            "name": self.name,
            "result": self.outcome,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
            "note": self.note,
            "time": round(self.time_s, 3),
        }


@dataclass
class Report:
    """Every check of one run, in the order they ran; `started` is a `time.monotonic()` reading."""

    results: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    timestamp: float = field(default_factory=time.time)

    def add(self, result: CheckResult) -> CheckResult:
        """Append `result` and return it, for a check that fills it in as it goes."""
        self.results.append(result)
        return result

    def count(self, outcome: str) -> int:
        return sum(1 for result in self.results if result.outcome == outcome)

    @property
    def ok(self) -> bool:
        return not self.count(FAILED) and not self.count(ERROR)

    def elapsed(self) -> float:
        return time.monotonic() - self.started
