"""Table declarations: the one place where a table's name, columns and flags live.

The apsw CREATE TABLE statement, the shell's `.schema` output and the help text are all
derived from a `TableSchema`, and the query planner reads the column flags from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "TEXT",
    "INTEGER",
    "BIGINT",
    "DOUBLE",
    "Column",
    "TableSchema",
    "QueryContext",
    "Row",
    "Generator",
    "Table",
]

TEXT = "TEXT"
INTEGER = "INTEGER"
BIGINT = "BIGINT"
DOUBLE = "DOUBLE"
COLUMN_TYPES = (TEXT, INTEGER, BIGINT, DOUBLE)

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """One column of a table, with osquery's flags.

    `index`: equality and IN constraints on it reach the generator.
    `required`: a query must constrain it (or, when a table has several required
    columns, at least one of them) with `=` or `IN`.
    `additional`: the generator reads constraints on it as input.
    `hidden`: left out of `SELECT *`.
    `unsupported`: the column has no meaning on Linux and is always NULL.
    """

    name: str
    type: str
    description: str = ""
    index: bool = False
    required: bool = False
    additional: bool = False
    hidden: bool = False
    unsupported: bool = False

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"column {self.name}: unknown type {self.type!r}")

    @property
    def pushed_down(self) -> bool:
        """Whether constraints on this column are handed to the table's generator."""
        return self.index or self.required or self.additional


@dataclass(frozen=True)
class TableSchema:
    """A table's name, description and columns, in declaration order.

    `from_store` marks a table whose rows come from the daemon's database, as every
    event table's do, so that a query without a database can explain why it is empty.
    `typed_rows` promises that the generator returns every value in its column's
    type, with text as valid UTF-8 `str`, so the engine skips converting each value
    (osquery's `strongly_typed_rows` attribute). The registry test checks it.
    """

    name: str
    description: str
    columns: tuple[Column, ...]
    event_table: bool = False
    from_store: bool = False
    typed_rows: bool = False

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns if column.required)

    def create_statement(self) -> str:
        """Return the CREATE TABLE statement that declares this table to SQLite."""
        lines = []
        for column in self.columns:
            hidden = " HIDDEN" if column.hidden else ""
            lines.append(f"  `{column.name}` {column.type}{hidden}")
        body = ",\n".join(lines)
        return f"CREATE TABLE `{self.name}` (\n{body}\n)"


@dataclass
class QueryContext:
    """What a generator learns about the query that scans its table.

    `constraints` maps a pushed-down column to its (operator, value) pairs, where the
    operator is one of `=`, `>`, `>=`, `<`, `<=`, `LIKE`, `GLOB`, or `IN` with a
    frozenset value. SQLite checks every constraint again on the rows a generator
    returns, so a generator may ignore any of them.
    `columns_used` names the columns the query reads, so a generator can skip costly
    work for the rest.
    `store` is the event store of `*_events` tables (None when no database is open).
    `scope` names the scheduled query that runs the scan, or None for ad hoc queries.
    `marks` receives, per (scope, table), the newest event id an event table returned;
    the engine stores them once the statement succeeds, so the scope sees each event
    once.
    """

    constraints: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    columns_used: frozenset[str] = frozenset()
    store: Any = None
    scope: str | None = None
    marks: dict[tuple[str, str], int] = field(default_factory=dict)

    def equals(self, column: str) -> set[Any] | None:
        """Return the values that `=` and `IN` constraints allow for a column.

        None means the column is not constrained by equality. Several equality
        constraints on one column are ANDed, so their value sets intersect.
        """
        allowed: set[Any] | None = None
        for op, value in self.constraints.get(column, ()):
            if op == "=":
                values = {value}
            elif op == "IN":
                values = set(value)
            else:
                continue
            allowed = values if allowed is None else allowed & values
        return allowed

    def ranges(self, column: str) -> list[tuple[str, Any]]:
        """Return the `>`, `>=`, `<` and `<=` constraints on a column."""
        return [
            (op, value)
            for op, value in self.constraints.get(column, ())
            if op in (">", ">=", "<", "<=")
        ]

    def uses(self, column: str) -> bool:
        return not self.columns_used or column in self.columns_used


Generator = Callable[[QueryContext], Iterable[Row]]


@dataclass(frozen=True)
class Table:
    """A declared table and the generator that produces its rows."""

    schema: TableSchema
    generate: Generator
