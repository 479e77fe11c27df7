"""Rendering query results for people: the shell's and `sensor query`'s output modes."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Sequence

from sensor.text import fs_text

__all__ = ["MODES", "json_value", "render"]

MODES = ("pretty", "line", "csv", "json", "list")


def json_value(value: Any) -> Any:
    """Return a SQL value as JSON can hold it.

    A BLOB becomes escaped text as `sensor.text.fs_text` writes it, and an infinite
    or NaN float becomes its text ("inf", "nan"), which strict JSON parsers accept.
    """
    if isinstance(value, bytes):
        return fs_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return fs_text(value)
    return str(value)


def _pretty(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(name) for name in columns]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    rule = "+" + "+".join("-" * (width + 2) for width in widths) + "+"

    def line(values: Sequence[str]) -> str:
        padded = (f" {text.ljust(width)} " for text, width in zip(values, widths))
        return "|" + "|".join(padded) + "|"

    lines = [rule, line(columns), rule]
    lines.extend(line(row) for row in cells)
    lines.append(rule)
    return "\n".join(lines)


def _line(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    width = max((len(name) for name in columns), default=0)
    blocks = []
    for row in rows:
        block = [
            f"{name.rjust(width)} = {_cell(value)}" for name, value in zip(columns, row)
        ]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks)


def _csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[_cell(value) for value in row] for row in rows])
    return buffer.getvalue().rstrip("\n")


def _json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    objects = [
        {name: json_value(value) for name, value in zip(columns, row)} for row in rows
    ]
    return json.dumps(objects, indent=2, ensure_ascii=False, allow_nan=False)


def _list(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["|".join(columns)]
    lines.extend("|".join(_cell(value) for value in row) for row in rows)
    return "\n".join(lines)


_RENDERERS = {
    "pretty": _pretty,
    "line": _line,
    "csv": _csv,
    "json": _json,
    "list": _list,
}


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], mode: str) -> str:
    """Return the text of a result in one of `MODES`; empty when it has no columns."""
    if not columns:
        return ""
    if mode != "json" and not rows and mode in ("pretty", "line"):
        return ""
    return _RENDERERS[mode](columns, rows)
