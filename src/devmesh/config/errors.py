"""Config errors that name the file, the key path and the line, and say how to fix them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the config, located as precisely as the file allows."""

    file: Path | None
    line: int | None
    key_path: tuple[str, ...]
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = ".".join(self.key_path)
        text = f"{where}{key}: {self.message}" if key else f"{where}{self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(Exception):
    """The config cannot be used; `problems` says where and why. The CLI exits 2 on it."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))

    @classmethod
    def single(
        cls,
        message: str,
        *,
        file: Path | None = None,
        line: int | None = None,
        key_path: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> ConfigError:
        return cls([ConfigProblem(file, line, key_path, message, hint)])
