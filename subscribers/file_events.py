"""The file_events subscriber: inotify events, described and hashed, into the store.

Only the table declaration is built at import time, so a query that reads file_events
imports neither trio nor hashlib. The subscriber imports them when it runs.

Events are lost here in two ways: `store_failed` is a batch that could not be written,
and `events_max` counts the oldest events, deleted to keep the table within that limit.
Each reason is counted in `statistics()` and logged as a WARNING at most once a minute.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sensor.event_table import event_generator
from sensor.events import Counters, Event, Statistics
from sensor.ratelimit import LossWarnings
from sensor.schema import BIGINT, INTEGER, TEXT, Column, Table, TableSchema
from sensor.text import fs_text

if TYPE_CHECKING:
    import trio

    from sensor.store import Store

__all__ = ["READ_MAX", "SCHEMA", "TABLES", "FileEventsSubscriber"]

logger = logging.getLogger(__name__)

SCHEMA = TableSchema(
    "file_events",
    "Changes to files under the file_paths patterns, reported by inotify.",
    (
        Column("target_path", TEXT, "The path of the changed file"),
        Column("category", TEXT, "The file_paths category whose pattern matched"),
        Column("action", TEXT, "Change: CREATED, UPDATED, DELETED, MOVED_FROM, ..."),
        Column("transaction_id", BIGINT, "inotify cookie pairing MOVED_FROM/MOVED_TO"),
        Column("inode", BIGINT, "Inode number"),
        Column("uid", BIGINT, "Owning user ID"),
        Column("gid", BIGINT, "Owning group ID"),
        Column("mode", TEXT, "Permission bits in octal"),
        Column("size", BIGINT, "Size in bytes"),
        Column("atime", BIGINT, "Last access time"),
        Column("mtime", BIGINT, "Last modification time"),
        Column("ctime", BIGINT, "Last status change time"),
        Column("md5", TEXT, "MD5 of the content"),
        Column("sha1", TEXT, "SHA1 of the content"),
        Column("sha256", TEXT, "SHA256 of the content"),
        Column("hashed", INTEGER, "1 if hashed, 0 if not hashed, -1 if hashing failed"),
        Column(
            "time", BIGINT, "Unix time at which the event was read", additional=True
        ),
        Column("eid", TEXT, "Event ID", hidden=True),
    ),
    event_table=True,
)

TABLES = [Table(SCHEMA, event_generator("file_events"))]

# Actions after which the path may name new content, so it is hashed. osquery
# hashes only CREATED and UPDATED, but a file moved into a watched directory
# (MOVED_TO) replaces what the path held just as a write does.
_HASHED_ACTIONS = frozenset({"CREATED", "UPDATED", "MOVED_TO"})

# Maximum number of events stored in one transaction.
_BATCH_MAX = 512

# Maximum seconds between expiry runs.
_EXPIRE_INTERVAL = 60

# Seconds between checks for lost events that are counted but not logged yet.
_FLUSH_INTERVAL = 10

_HASH_CHUNK = 1024 * 1024

# Default of `read_max`, the largest file in bytes that is hashed, as in osquery's
# read_max flag.
READ_MAX = 50 * 1024 * 1024


class FileEventsSubscriber:
    """Stats and hashes inotify events and stores them as file_events rows.

    Events older than `events_expiry` seconds, and the oldest beyond `events_max`,
    are deleted by `expire`, which `run` calls periodically. A stored batch that takes
    the table past `events_max` deletes the oldest events at once, so a burst cannot
    outgrow the limit.

    A regular file larger than `read_max` bytes is not hashed: its row is stored
    with the stat columns and `hashed` = 0, so one large file cannot keep a worker
    thread reading for long.
    """

    name = "file_events"

    def __init__(
        self,
        store: Store,
        *,
        events_expiry: int,
        events_max: int,
        read_max: int = READ_MAX,
        clock: Callable[[], float] = time.time,
    ):
        if read_max < 0:
            raise ValueError(f"read_max must be 0 or more bytes, not {read_max!r}")
        self._store = store
        self._read_max = read_max
        self._events_expiry = events_expiry
        self._events_max = events_max
        self._clock = clock
        self._counters = Counters(self.name, "subscriber")
        self._warnings = LossWarnings(logger)

    def statistics(self) -> Statistics:
        return self._counters.snapshot()

    async def run(
        self,
        receive: trio.MemoryReceiveChannel[Event],
        *,
        task_status: trio.TaskStatus[None] | None = None,
    ) -> None:
        """Store events from `receive` until it closes, expiring old ones meanwhile."""
        import trio

        self._counters.buffered = self._store.count_events(self.name)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire_periodically)
                nursery.start_soon(self._flush_warnings)
                if task_status is not None:
                    task_status.started()
                async with receive:
                    await self._store_events(receive)
                nursery.cancel_scope.cancel()
        finally:
            self._warnings.flush(self._clock(), force=True)

    async def _store_events(self, receive: trio.MemoryReceiveChannel[Event]) -> None:
        import trio

        async for event in receive:
            batch = [event]
            while len(batch) < _BATCH_MAX:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            rows = await trio.to_thread.run_sync(
                describe_events, batch, self._read_max
            )
            self._add(rows)

    def _add(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        import apsw

        try:
            self._store.add_events(self.name, rows)
        except apsw.Error as error:
            message = "storing file_events failed: %s"
            self._lost("store_failed", len(rows), message, error)
            return
        self._counters.events += len(rows)
        self._counters.buffered += len(rows)
        excess = self._counters.buffered - self._events_max
        if excess > 0:
            dropped = self._store.drop_oldest(self.name, excess)
            self._counters.buffered -= dropped
            self._dropped_over_max(dropped)

    async def _expire_periodically(self) -> None:
        import trio

        interval = max(1, min(_EXPIRE_INTERVAL, self._events_expiry))
        while True:
            await trio.sleep(interval)
            self.expire(int(self._clock()))

    async def _flush_warnings(self) -> None:
        import trio

        while True:
            await trio.sleep(_FLUSH_INTERVAL)
            self._warnings.flush(self._clock())

    def expire(self, now: int) -> None:
        """Delete events older than events_expiry and the oldest beyond events_max.

        Events deleted by age are counted as expired. Events deleted by count are
        counted and logged as lost, because they may not have been read by any query.
        """
        expired, dropped = self._store.expire(
            self.name, now, self._events_expiry, self._events_max
        )
        self._counters.expired += expired
        self._dropped_over_max(dropped)
        self._counters.buffered = self._store.count_events(self.name)

    def _dropped_over_max(self, dropped: int) -> None:
        if dropped:
            self._lost(
                "events_max",
                dropped,
                "file_events dropped its oldest events to stay within events_max=%d",
                self._events_max,
            )

    def _lost(self, reason: str, count: int, message: str, *args: object) -> None:
        """Count `count` events lost for `reason`, record `message % args` as the last
        error, and log it as a rate-limited WARNING."""
        now = self._clock()
        self._counters.drop(reason, count)
        self._counters.error(message % args, int(now))
        self._warnings.lost(reason, count, now, message, *args)


def describe_events(
    events: Iterable[Event], read_max: int = READ_MAX
) -> list[tuple[int, dict[str, Any]]]:
    """Return (time, row) per event: its fields plus the file's stat and hashes.

    Blocking: it reads the files. A path is described once per call, even when
    several events name it, so a CREATED and an UPDATED of one file in a batch hash
    it once. Regular files larger than `read_max` bytes are not hashed.
    """
    described: dict[tuple[bytes, bool], dict[str, Any]] = {}
    rows = []
    for event in events:
        path = event.fields["target_path"]
        if isinstance(path, str):
            path = os.fsencode(path)
        hashing = event.action in _HASHED_ACTIONS
        key = (path, hashing)
        if key not in described:
            described[key] = describe_file(path, hashing, read_max)
        row = dict(event.fields)
        row.update(described[key])
        row["target_path"] = fs_text(path)
        row["action"] = event.action
        rows.append((event.time, row))
    return rows


def describe_file(
    path: bytes, hashing: bool, read_max: int = READ_MAX
) -> dict[str, Any]:
    """Return stat columns of a file, and its hashes when `hashing` and it is a
    regular file of at most `read_max` bytes.

    A file that is gone returns only `hashed` = 0, so the event's own fields stay.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return {"hashed": 0}
    columns: dict[str, Any] = {
        "inode": st.st_ino,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "size": st.st_size,
        "atime": int(st.st_atime),
        "mtime": int(st.st_mtime),
        "ctime": int(st.st_ctime),
        "hashed": 0,
    }
    if hashing and stat.S_ISREG(st.st_mode) and st.st_size <= read_max:
        columns.update(hash_file(path, read_max))
    return columns


def hash_file(path: bytes, read_max: int = READ_MAX) -> dict[str, Any]:
    """Return md5, sha1, sha256 and `hashed` = 1, or `hashed` = -1 if reading fails.

    A file that has grown past `read_max` bytes by the time it is read returns
    `hashed` = 0, and no more than `read_max` + 1 bytes are read.
    """
    import hashlib

    digests = [hashlib.md5(), hashlib.sha1(), hashlib.sha256()]
    try:
        # The path was a regular file at lstat but may have been replaced since.
        # O_NOFOLLOW keeps a symbolic link from being followed, and O_NONBLOCK keeps
        # a FIFO from blocking the open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as file:
            remaining = read_max + 1
            while chunk := file.read(min(_HASH_CHUNK, remaining)):
                remaining -= len(chunk)
                if remaining == 0:
                    return {"hashed": 0, "size": os.fstat(fd).st_size}
                for digest in digests:
                    digest.update(chunk)
            # A writer may have grown the file since the lstat, so size and times
            # are taken again from the content that was hashed.
            after = os.fstat(fd)
    except OSError as error:
        logger.debug("hashing %s failed: %s", fs_text(path), error)
        return {"hashed": -1}
    md5, sha1, sha256 = (digest.hexdigest() for digest in digests)
    return {
        "md5": md5,
        "sha1": sha1,
        "sha256": sha256,
        "hashed": 1,
        "size": after.st_size,
        "mtime": int(after.st_mtime),
        "ctime": int(after.st_ctime),
    }
