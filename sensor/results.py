"""Differential results and osquery's result-log line format.

A scheduled query's rows are compared with its previous run: rows that appeared are
logged with action "added" and rows that went away with "removed". Each line is a
JSON object with osquery's keys: name, hostIdentifier, calendarTime, unixTime, epoch,
counter, numerics, columns and action.
"""

from __future__ import annotations

import json
import time as _time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sensor.output import json_value

__all__ = ["Diff", "diff_rows", "format_rows", "format_snapshot"]

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Diff:
    added: list[Row]
    removed: list[Row]


def _key(row: Row) -> tuple:
    return tuple(sorted(row.items(), key=lambda item: item[0]))


def diff_rows(previous: Iterable[Row], current: Iterable[Row]) -> Diff:
    """Compare two result sets as multisets of rows."""
    before = Counter(_key(row) for row in previous)
    after = Counter(_key(row) for row in current)
    added = [dict(key) for key, count in (after - before).items() for _ in range(count)]
    removed = [
        dict(key) for key, count in (before - after).items() for _ in range(count)
    ]
    return Diff(added=added, removed=removed)


def calendar_time(unix_time: int) -> str:
    """Return the time as osquery writes calendarTime: asctime in UTC, then "UTC"."""
    return _time.asctime(_time.gmtime(unix_time)) + " UTC"


def _columns(row: Row, numerics: bool) -> dict[str, Any]:
    # osquery writes every value as a string unless log_numerics_as_numbers is set,
    # and NULL as an empty string.
    # Keys are sorted, as in osquery's lines, whatever the query's column order.
    columns = {}
    for name, value in sorted(row.items()):
        value = json_value(value)
        if value is None:
            columns[name] = ""
        elif numerics and isinstance(value, (int, float)):
            columns[name] = value
        else:
            columns[name] = str(value)
    return columns


def _header(
    name: str, host: str, unix_time: int, epoch: int, counter: int, numerics: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "hostIdentifier": host,
        "calendarTime": calendar_time(unix_time),
        "unixTime": unix_time,
        "epoch": epoch,
        "counter": counter,
        "numerics": numerics,
    }


def format_rows(
    name: str,
    diff: Diff,
    *,
    host: str,
    unix_time: int,
    epoch: int,
    counter: int,
    numerics: bool,
) -> list[str]:
    """Return one JSON line per added or removed row, in the event format."""
    header = _header(name, host, unix_time, epoch, counter, numerics)
    lines = []
    for action, rows in (("removed", diff.removed), ("added", diff.added)):
        for row in rows:
            line = {**header, "columns": _columns(row, numerics), "action": action}
            lines.append(json.dumps(line, ensure_ascii=False, allow_nan=False))
    return lines


def format_snapshot(
    name: str,
    rows: list[Row],
    *,
    host: str,
    unix_time: int,
    epoch: int,
    counter: int,
    numerics: bool,
) -> str:
    """Return one JSON line holding every row, as osquery logs snapshot queries."""
    header = _header(name, host, unix_time, epoch, counter, numerics)
    line = {
        **header,
        "snapshot": [_columns(row, numerics) for row in rows],
        "action": "snapshot",
    }
    return json.dumps(line, ensure_ascii=False, allow_nan=False)
