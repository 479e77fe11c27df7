"""The SQL engine: every registered table as an apsw eponymous virtual table.

Constraints on pushed-down columns (see `Column.pushed_down`) reach the table's
generator through `QueryContext`; SQLite still checks them on the returned rows, so a
generator may ignore any. Tables are imported on the first statement that names them.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import apsw

from sensor.errors import QueryError
from sensor.registry import TABLE_MODULES, load_table
from sensor.schema import BIGINT, INTEGER, QueryContext, Table, TableSchema
from sensor.text import fs_text, sql_text

__all__ = ["Engine", "QueryResult"]

_OPERATORS = {
    apsw.SQLITE_INDEX_CONSTRAINT_EQ: "=",
    apsw.SQLITE_INDEX_CONSTRAINT_GT: ">",
    apsw.SQLITE_INDEX_CONSTRAINT_GE: ">=",
    apsw.SQLITE_INDEX_CONSTRAINT_LT: "<",
    apsw.SQLITE_INDEX_CONSTRAINT_LE: "<=",
    apsw.SQLITE_INDEX_CONSTRAINT_LIKE: "LIKE",
    apsw.SQLITE_INDEX_CONSTRAINT_GLOB: "GLOB",
}

# Costs handed to SQLite's planner: a scan narrowed by equality on a pushed-down
# column is far cheaper than a full scan, and a plan that leaves a required column
# unconstrained must never win.
_COST_NARROWED = 10.0
_COST_FULL_SCAN = 1_000_000.0
_COST_UNUSABLE = 1e18

# Operators that pick rows by value, and so satisfy a required column: LIKE counts
# because osquery's file and hash tables expand LIKE patterns on `path`.
_NARROWING = ("=", "IN", "LIKE")

# Operations that reach outside the engine's own tables: ATTACH would open or
# create any file as a database, as osquery also forbids.
_DENIED = frozenset({apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH})


def _authorize(operation: int, *args: Any) -> int:
    return apsw.SQLITE_DENY if operation in _DENIED else apsw.SQLITE_OK


# Virtual machine steps between two progress callbacks; small enough that Ctrl-C
# stops a query within milliseconds, large enough to cost nothing measurable.
_PROGRESS_STEPS = 10_000


# idxNum of a plan that leaves every required column unconstrained.
_PLAN_UNSATISFIED = 1
# The EXPLAIN QUERY PLAN detail of such a plan, followed by its idxStr.
_UNSATISFIED_DETAIL = f"VIRTUAL TABLE INDEX {_PLAN_UNSATISFIED}:"


def _required_message(schema: TableSchema) -> str:
    required = schema.required_columns
    return (
        f"table {schema.name} requires an =, IN or LIKE constraint on "
        f"{' or '.join(required)}, for example WHERE {required[0]} = '/etc/hosts'"
    )


class QueryResult:
    """Column names and rows of one statement."""

    def __init__(self, columns: Sequence[str], rows: list[tuple[Any, ...]]):
        self.columns = list(columns)
        self.rows = rows
        # Per (scope, subscriber), the newest event id a scoped statement returned.
        # The caller stores them with `Store.set_marks` once the rows are delivered,
        # so a crash in between delivers those events again instead of losing them.
        self.marks: dict[tuple[str, str], int] = {}
        self.tables: frozenset[str] = frozenset()

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


class Engine:
    """An apsw connection with every registered table attached.

    `store` is the event store that `*_events` tables read; without one they are
    empty. One engine serves one thread at a time.
    """

    def __init__(self, store: Any = None):
        self.store = store
        self.connection = apsw.Connection(":memory:")
        self.scope: str | None = None
        self.tables_read: set[str] = set()
        self.pending_marks: dict[tuple[str, str], int] = {}
        # SQLite calls back every _PROGRESS_STEPS virtual machine steps. The callback
        # is Python code, so a pending signal handler runs there, and Ctrl-C stops
        # even a query that never leaves SQLite, such as a recursive CTE.
        # It also aborts every statement once `stop` has been called.
        self.stopped = False
        self.connection.set_progress_handler(self._progress, _PROGRESS_STEPS)
        self.connection.authorizer = _authorize
        for name in TABLE_MODULES:
            self.connection.create_module(
                name,
                _Module(self, name),
                use_bestindex_object=True,
                eponymous_only=True,
                read_only=True,
            )

    def execute(
        self, sql: str, bindings: Sequence[Any] | None = None, scope: str | None = None
    ) -> QueryResult:
        """Run one or more statements and return the result of the last one.

        `scope` names the scheduled query that runs the SQL: event tables then return
        only the events that this scope has not seen, and the result's `marks` hold
        the newest one per table.
        """
        return self.execute_all(sql, bindings, scope)[-1]

    def execute_all(
        self, sql: str, bindings: Sequence[Any] | None = None, scope: str | None = None
    ) -> list[QueryResult]:
        """Run one or more statements and return each one's result, in order.

        The last result carries the marks and the tables read of the whole run.
        """
        sql = sql_text(sql)
        self.scope = scope
        self.tables_read = set()
        self.pending_marks = {}
        try:
            results = self._run(sql, bindings)
        except apsw.Error as error:
            raise QueryError(self._explain(error)) from None
        except OSError as error:
            raise QueryError(f"reading a table failed: {error}") from None
        finally:
            self.scope = None
        results[-1].marks = self.pending_marks
        results[-1].tables = frozenset(self.tables_read)
        self.pending_marks = {}
        return results

    def is_event_based(self, result: QueryResult) -> bool:
        """Return whether the statement read an `*_events` table."""
        return any(load_table(name).schema.event_table for name in result.tables)

    def reads_store(self, result: QueryResult) -> bool:
        """Return whether the statement read a table filled from the database."""
        schemas = [load_table(name).schema for name in result.tables]
        return any(schema.event_table or schema.from_store for schema in schemas)

    def stop(self) -> None:
        """Abort the statement running on this engine and every later one.

        Callable from any thread. Such statements raise QueryError("interrupted").
        A statement that starts just after this call, before SQLite runs, is
        aborted at its first progress callback.
        """
        self.stopped = True
        self.connection.interrupt()

    def _progress(self) -> bool:
        return self.stopped

    def check(self, sql: str) -> int:
        """Prepare every statement of `sql` without running it; return how many.

        Raise QueryError for a syntax error, an unknown table or column, or a table
        whose required columns are left unconstrained.
        """
        import apsw.ext

        remaining = sql_text(sql)
        statements = 0
        while remaining.strip():
            try:
                info = apsw.ext.query_info(
                    self.connection, remaining, explain_query_plan=True
                )
            except apsw.Error as error:
                raise QueryError(self._explain(error)) from None
            # A comment or a lone semicolon prepares to no program.
            statements += 1 if info.has_vdbe else 0
            self._check_plan(info.query_plan)
            remaining = info.query_remaining or ""
        return statements

    def _check_plan(self, plan: Any) -> None:
        if plan is None:
            return
        detail = plan.detail or ""
        if _UNSATISFIED_DETAIL in detail:
            table = json.loads(detail.split(_UNSATISFIED_DETAIL, 1)[1])["table"]
            raise QueryError(_required_message(self.schema(table)))
        for child in plan.sub or ():
            self._check_plan(child)

    def _run(self, sql: str, bindings: Sequence[Any] | None) -> list[QueryResult]:
        cursor = self.connection.cursor()
        results: list[QueryResult] = []

        # apsw runs every statement of `sql` in turn and calls this before each.
        def trace(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
            columns = [name for name, _ in cursor.get_description()]
            results.append(QueryResult(columns, []))
            return True

        cursor.exec_trace = trace
        for row in cursor.execute(sql, bindings):
            results[-1].rows.append(row)
        return results or [QueryResult([], [])]

    def _explain(self, error: apsw.Error) -> str:
        message = str(error)
        for prefix in ("SQLError: ", "ConstraintError: ", "AuthError: "):
            message = message.removeprefix(prefix)
        if message == "not authorized":
            return (
                "not authorized: ATTACH, DETACH and load_extension are disabled, "
                "because queries only read sensor's tables"
            )
        return message

    def schema(self, name: str) -> TableSchema:
        if name not in TABLE_MODULES:
            raise QueryError(f"no such table: {name}")
        return load_table(name).schema


class _Module:
    """The apsw module behind one table name; it imports the table on first use."""

    def __init__(self, engine: Engine, name: str):
        self.engine = engine
        self.name = name

    def Connect(self, connection, modulename, databasename, tablename, *args):
        table = load_table(self.name)
        return table.schema.create_statement(), _VirtualTable(self.engine, table)

    Create = Connect


class _VirtualTable:
    def __init__(self, engine: Engine, table: Table):
        self.engine = engine
        self.table = table
        self.schema = table.schema

    def BestIndexObject(self, info: apsw.IndexInfo) -> bool:
        pushed: list[tuple[str, str]] = []
        narrowed = False
        constrained_required = False
        for i in range(info.nConstraint):
            if not info.get_aConstraint_usable(i):
                continue
            index = info.get_aConstraint_iColumn(i)
            op = _OPERATORS.get(info.get_aConstraint_op(i))
            if index < 0 or op is None:
                continue
            column = self.schema.columns[index]
            if not column.pushed_down:
                continue
            if op == "=" and info.get_aConstraintUsage_in(i):
                info.set_aConstraintUsage_in(i, True)
                op = "IN"
            pushed.append((column.name, op))
            info.set_aConstraintUsage_argvIndex(i, len(pushed))
            if op in _NARROWING:
                narrowed = narrowed or column.index or column.required
                constrained_required = constrained_required or column.required

        used = sorted(info.colUsed) if info.colUsed else []
        plan = {"table": self.schema.name, "constraints": pushed, "used": used}
        info.idxStr = json.dumps(plan)
        if self.schema.required_columns and not constrained_required:
            # Raising here would abort planning even where another join order
            # supplies the constraint, so the plan is priced out instead, and the
            # cursor (or Engine.check, which reads idxNum) raises if SQLite picks it.
            info.idxNum = _PLAN_UNSATISFIED
            info.estimatedCost = _COST_UNUSABLE
        else:
            info.estimatedCost = _COST_NARROWED if narrowed else _COST_FULL_SCAN
        return True

    def Open(self) -> _Cursor:
        return _Cursor(self)

    def Disconnect(self) -> None:
        pass

    Destroy = Disconnect


def _converter(column_type: str):
    if column_type in (INTEGER, BIGINT):
        return _to_int
    if column_type == "DOUBLE":
        return _to_float
    return _to_text


def _to_int(value: Any) -> Any:
    if value is None or type(value) is int:
        return value
    if isinstance(value, str) and not value.strip():
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _to_float(value: Any) -> Any:
    if value is None or type(value) is float:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _to_text(value: Any) -> Any:
    # A str is kept unless it contains surrogates (bytes that the operating system
    # could not decode). Raw bytes are always escaped, because they come straight
    # from the kernel and may contain control characters.
    if value is None:
        return None
    if type(value) is str:
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return fs_text(value)
    if isinstance(value, (bytes, bytearray)):
        return fs_text(bytes(value))
    return str(value)


class _Cursor:
    def __init__(self, table: _VirtualTable):
        self.table = table
        self.rows: list[tuple[Any, ...]] = []
        self.position = 0

    def Filter(self, indexnum: int, indexname: str, constraintargs: tuple) -> None:
        engine = self.table.engine
        schema = self.table.schema
        plan = json.loads(indexname) if indexname else {"constraints": [], "used": []}
        if indexnum == _PLAN_UNSATISFIED:
            raise QueryError(_required_message(schema))
        context = QueryContext(
            columns_used=frozenset(
                schema.columns[i].name for i in plan["used"] if i < len(schema.columns)
            ),
            store=engine.store,
            scope=engine.scope,
            marks=engine.pending_marks,
        )
        for (name, op), value in zip(plan["constraints"], constraintargs):
            if op == "IN":
                value = frozenset(value)
            context.constraints.setdefault(name, []).append((op, value))
        engine.tables_read.add(schema.name)
        self.rows = list(self._materialize(self.table.table.generate(context)))
        self.position = 0

    def _materialize(self, rows: Iterable[Any]) -> Iterable[tuple[Any, ...]]:
        schema = self.table.schema
        columns = schema.columns
        names = [column.name for column in columns]
        if schema.typed_rows:
            for row in rows:
                yield tuple(map(row.get, names))
            return
        converters = [_converter(column.type) for column in columns]
        pairs = list(zip(names, converters))
        for row in rows:
            yield tuple(convert(row.get(name)) for name, convert in pairs)

    def Eof(self) -> bool:
        return self.position >= len(self.rows)

    def Rowid(self) -> int:
        return self.position

    def Column(self, number: int) -> Any:
        if number == -1:
            return self.position
        return self.rows[self.position][number]

    def Next(self) -> None:
        self.position += 1

    def Close(self) -> None:
        self.rows = []
