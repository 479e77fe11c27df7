"""Result loggers: where scheduled-query result lines go (osquery's logger plugins)."""

from __future__ import annotations

import os
import sys
from typing import Protocol, Sequence, TextIO

from sensor.config import Options, create_directory
from sensor.errors import ConfigError

__all__ = ["ResultLogger", "FilesystemLogger", "StdoutLogger", "open_loggers"]


class ResultLogger(Protocol):
    def write(self, lines: Sequence[str], *, snapshot: bool = False) -> None: ...

    def close(self) -> None: ...


def _open_log(path: str) -> TextIO:
    create_directory("options.logger_path", os.path.dirname(path))
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"options.logger_path: cannot open {path}: {error.strerror}"
        ) from None


class FilesystemLogger:
    """Appends result lines to `sensor.results.log` in `logger_path`.

    Lines of snapshot queries go to `sensor.snapshots.log` beside it, as osquery
    keeps them apart from differential results.
    """

    def __init__(self, results_path: str, snapshots_path: str):
        self.results = _open_log(results_path)
        self.snapshots_path = snapshots_path
        self.snapshots: TextIO | None = None

    def write(self, lines: Sequence[str], *, snapshot: bool = False) -> None:
        if snapshot and self.snapshots is None:
            self.snapshots = _open_log(self.snapshots_path)
        stream = self.snapshots if snapshot else self.results
        for line in lines:
            stream.write(line + "\n")
        stream.flush()

    def close(self) -> None:
        self.results.close()
        if self.snapshots is not None:
            self.snapshots.close()


class StdoutLogger:
    """Echoes result lines to standard output."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def write(self, lines: Sequence[str], *, snapshot: bool = False) -> None:
        for line in lines:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def open_loggers(options: Options) -> list[ResultLogger]:
    loggers: list[ResultLogger] = []
    for plugin in options.logger_plugins:
        if plugin == "filesystem":
            loggers.append(
                FilesystemLogger(options.result_log_path, options.snapshot_log_path)
            )
        elif plugin == "stdout":
            loggers.append(StdoutLogger())
    return loggers
