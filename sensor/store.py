"""The sensor database: buffered events, scheduled-query state and statistics.

One SQLite file in WAL mode, so the daemon writes while `sensor query` and `sensor
shell` read. Event payloads and stored query results are msgpack.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Iterator, Mapping

import apsw
import msgpack

from sensor.config import create_directory
from sensor.errors import ConfigError
from sensor.events import Statistics

__all__ = ["Store", "StoredEvent"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    eid INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber TEXT NOT NULL,
    time INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (subscriber, time);
CREATE TABLE IF NOT EXISTS marks (
    scope TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    eid INTEGER NOT NULL,
    PRIMARY KEY (scope, subscriber)
);
CREATE TABLE IF NOT EXISTS results (
    name TEXT PRIMARY KEY,
    query TEXT NOT NULL,
    counter INTEGER NOT NULL,
    rows BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS statistics (
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (name, kind)
);
"""

# How long a connection waits for another process's write lock before failing.
_BUSY_TIMEOUT_MS = 5000

StoredEvent = tuple[int, int, dict[str, Any]]


def _check_database_path(path: str, create: bool) -> None:
    key = "options.database_path"
    if os.path.isdir(path):
        raise ConfigError(f"{key}: {path} is a directory; name a file in it")
    if not create:
        if not os.path.exists(path):
            raise ConfigError(
                f"{key}: database {path} not found; start the daemon with this "
                "config first (sensor run --config ...)"
            )
        return
    create_directory(key, os.path.dirname(os.path.abspath(path)))


class Store:
    """An open sensor database. Use one `Store` per thread."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, create: bool = True
    ):
        """Open the database at `path`, or an in-memory one when it is None.

        With `create` false, a database that does not exist yet raises ConfigError
        instead of being created, which is what a reader of the daemon's database
        wants. Errors name the `options.database_path` key.
        """
        self.path = os.fspath(path) if path is not None else ":memory:"
        if self.path != ":memory:":
            _check_database_path(self.path, create)
        try:
            self.connection = apsw.Connection(self.path)
            self.connection.set_busy_timeout(_BUSY_TIMEOUT_MS)
            self.connection.execute("PRAGMA journal_mode = WAL")
            self.connection.execute("PRAGMA synchronous = NORMAL")
            with self.connection:
                self.connection.execute(_SCHEMA)
        except apsw.Error as error:
            raise ConfigError(
                f"options.database_path: cannot open {self.path}: {error}"
            ) from None

    def close(self) -> None:
        self.connection.close()

    # Events

    def add_events(self, subscriber: str, events: Iterable[tuple[int, Mapping]]) -> int:
        """Append (time, fields) pairs in one transaction; return how many."""
        rows = [
            (subscriber, time, msgpack.packb(dict(fields), use_bin_type=True))
            for time, fields in events
        ]
        with self.connection:
            self.connection.executemany(
                "INSERT INTO events (subscriber, time, payload) VALUES (?, ?, ?)", rows
            )
        return len(rows)

    def select_events(
        self,
        subscriber: str,
        after_eid: int = 0,
        upto_eid: int | None = None,
        time_ranges: Iterable[tuple[str, int]] = (),
    ) -> Iterator[StoredEvent]:
        """Yield (eid, time, fields) in eid order, filtered by eid and time bounds.

        `time_ranges` contains (operator, value) pairs with operators `>`, `>=`, `<`,
        `<=` and `=`, as pushed down from a WHERE clause on `time`.
        """
        sql = ["SELECT eid, time, payload FROM events WHERE subscriber = ? AND eid > ?"]
        args: list[Any] = [subscriber, after_eid]
        if upto_eid is not None:
            sql.append("AND eid <= ?")
            args.append(upto_eid)
        for op, value in time_ranges:
            if op in (">", ">=", "<", "<=", "=") and isinstance(value, (int, float)):
                sql.append(f"AND time {op} ?")
                args.append(value)
        sql.append("ORDER BY eid")
        for eid, time, payload in self.connection.execute(" ".join(sql), args):
            yield eid, time, msgpack.unpackb(payload, raw=False)

    def max_eid(self, subscriber: str) -> int:
        row = self.connection.execute(
            "SELECT max(eid) FROM events WHERE subscriber = ?", (subscriber,)
        ).fetchone()
        return row[0] or 0

    def count_events(self, subscriber: str) -> int:
        row = self.connection.execute(
            "SELECT count(*) FROM events WHERE subscriber = ?", (subscriber,)
        ).fetchone()
        return row[0]

    def expire(
        self, subscriber: str, now: int, max_age: int, max_count: int
    ) -> tuple[int, int]:
        """Delete events older than `max_age` seconds, then the oldest beyond `max_count`.

        Return (expired by age, dropped by count).
        """
        with self.connection:
            self.connection.execute(
                "DELETE FROM events WHERE subscriber = ? AND time < ?",
                (subscriber, now - max_age),
            )
            expired = self.connection.changes()
            excess = self.count_events(subscriber) - max_count
            dropped = self.drop_oldest(subscriber, excess) if excess > 0 else 0
        return expired, dropped

    def drop_oldest(self, subscriber: str, count: int) -> int:
        """Delete the `count` oldest events of a subscriber; return how many.

        Oldest means the lowest (time, eid), the order of the events_by_time index,
        so the cost grows with `count` and not with the number of stored events.
        """
        with self.connection:
            self.connection.execute(
                "DELETE FROM events WHERE eid IN ("
                " SELECT eid FROM events WHERE subscriber = ?"
                " ORDER BY time, eid LIMIT ?)",
                (subscriber, count),
            )
            return self.connection.changes()

    # Marks: the newest event each scheduled query has seen, per subscriber.

    def mark(self, scope: str, subscriber: str) -> int:
        row = self.connection.execute(
            "SELECT eid FROM marks WHERE scope = ? AND subscriber = ?",
            (scope, subscriber),
        ).fetchone()
        return row[0] if row else 0

    def set_marks(self, marks: Mapping[tuple[str, str], int]) -> None:
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO marks (scope, subscriber, eid) VALUES (?, ?, ?)",
                [
                    (scope, subscriber, eid)
                    for (scope, subscriber), eid in marks.items()
                ],
            )

    # Results of the previous run of each scheduled query, for differential logging.

    def previous_results(self, name: str) -> tuple[str, int, list[dict]] | None:
        """Return (query, counter, rows) of a scheduled query's previous run."""
        row = self.connection.execute(
            "SELECT query, counter, rows FROM results WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return row[0], row[1], msgpack.unpackb(row[2], raw=False)

    def save_results(
        self,
        name: str,
        query: str,
        counter: int,
        rows: list[dict],
        marks: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """Store a run's rows and the event marks it consumed, in one transaction."""
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO results (name, query, counter, rows)"
                " VALUES (?, ?, ?, ?)",
                (name, query, counter, msgpack.packb(rows, use_bin_type=True)),
            )
            if marks:
                self.set_marks(marks)

    # Statistics of the daemon's publishers and subscribers, for other processes.

    def save_statistics(self, snapshots: Iterable[Statistics]) -> None:
        rows = [
            (
                snapshot.name,
                snapshot.kind,
                msgpack.packb(dataclasses.asdict(snapshot), use_bin_type=True),
            )
            for snapshot in snapshots
        ]
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO statistics (name, kind, payload) VALUES (?, ?, ?)",
                rows,
            )

    def load_statistics(self) -> list[Statistics]:
        rows = self.connection.execute(
            "SELECT payload FROM statistics ORDER BY kind, name"
        ).fetchall()
        return [
            Statistics(**msgpack.unpackb(payload, raw=False)) for (payload,) in rows
        ]
