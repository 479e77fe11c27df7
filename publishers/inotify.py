"""The inotify publisher: changes to files matched by `file_paths` patterns, as Events.

One inotify instance watches directories, never files: a pattern's matches are entries
of watched directories, so a file that is replaced, deleted or not yet created is
still seen. Which directories to watch and which entries to report comes from
`sensor.paths`. Every directory's watch carries the (pattern, depth) pairs that led
to it, so an entry event is classified without walking the tree again.

Actions, as osquery's file_events names them (see inotify(7) for the masks):
- IN_CREATE is CREATED, IN_DELETE is DELETED, IN_ATTRIB is ATTRIBUTES_MODIFIED.
- IN_MOVED_FROM and IN_MOVED_TO are MOVED_FROM and MOVED_TO, and `transaction_id` is
  the cookie that pairs them.
- IN_MODIFY only marks a file as written. The IN_CLOSE_WRITE that ends the write is
  UPDATED, so a write is hashed once, with its final content. A file still open at
  the end of a read batch gets one UPDATED for all IN_MODIFY events of the batch, and
  another at its IN_CLOSE_WRITE. A close without a write reports nothing.
- IN_OPEN and IN_ACCESS are OPENED and ACCESSED, only for categories listed in
  `file_accesses`, because they fire on every read. They are reported for files only,
  because this publisher lists directories itself at start and after every rescan.
  NOTE: inotify does not say which process read a file, so the subscriber's own
  reads to hash a CREATED or UPDATED file show as OPENED and ACCESSED too.
- Repeats of ATTRIBUTES_MODIFIED or UPDATED on one path within a batch are coalesced.

A directory that appears under a pattern (created or moved in) is watched and then
listed, and CREATED is reported for the entries already in it, since their own
IN_CREATE happened before the watch existed. The directory's own row comes first. A
snapshot of (inode, size, mtime_ns, ctime_ns, mode, uid, gid) per reported entry
suppresses the duplicate when IN_CREATE arrives as well.

The same snapshot reconciles state after lost events, in a rescan: all patterns are
walked again, watches re-added, and differences reported as CREATED, UPDATED,
ATTRIBUTES_MODIFIED or DELETED, as `inotify_snapshot._changes` decides. An
IN_Q_OVERFLOW starts a rescan at once, before the events that follow it in the same
read, so the rescan compares with the state as of the overflow. Events dropped because
the channel to the subscriber was full start a rescan once the channel is at most half
full, which the reader checks every `_RESCAN_POLL` seconds meanwhile. The paths that a
batch with dropped events changed are compared with their state from before that
batch, so the rescan reports those changes again, even the ones whose events were sent.

Lost events are counted per reason in `statistics()`: `queue_full` (the channel to the
subscriber was full), `overflow` (the kernel queue overflowed), `watch_limit` and
`watch_failed` (one per directory that could not be watched), `rewatch_failed` (one
per pattern whose start or nearest existing ancestor kept vanishing while it was
watched again) and `parse_error` (one per read that could not be parsed). Each reason
is also logged as a WARNING, at most once a minute, with the count since the
previous warning.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from typing import Callable, Iterable, Mapping, Sequence

import trio
from inotify_simple import INotify, flags

from publishers.inotify_frames import RawEvent, parse_events
from publishers.inotify_snapshot import SnapshotMixin, _Batch, _FileState
from publishers.inotify_watches import WatchesMixin, _Move, _Rule, _Watch
from sensor.errors import PublisherError
from sensor.events import Counters, Event, Statistics
from sensor.paths import WatchPattern, parse_pattern
from sensor.ratelimit import LossWarnings
from sensor.text import fs_text

__all__ = ["InotifyPublisher", "RawEvent", "parse_events"]

logger = logging.getLogger(__name__)

# Large enough for hundreds of events per read. The kernel requires at least one
# header plus NAME_MAX + 1 bytes.
_READ_SIZE = 64 * 1024

# Seconds between checks for lost events that are counted but not logged yet.
_FLUSH_INTERVAL = 10

_ENTRY_MASK = (
    flags.CREATE
    | flags.DELETE
    | flags.MODIFY
    | flags.CLOSE_WRITE
    | flags.ATTRIB
    | flags.MOVED_FROM
    | flags.MOVED_TO
)
_ACCESS_MASK = flags.OPEN | flags.ACCESS
# IN_EXCL_UNLINK: no events for files that were unlinked while still open.
_WATCH_FLAGS = flags.ONLYDIR | flags.EXCL_UNLINK | flags.MOVE_SELF

# Seconds between checks whether the event channel has room for a due rescan.
_RESCAN_POLL = 0.1


class InotifyPublisher(WatchesMixin, SnapshotMixin):
    """Watches the directories that `file_paths` patterns name and sends Events.

    `file_paths` maps a category to its patterns, `exclude_paths` maps a category to
    patterns whose matches it does not report, and `file_accesses` lists the
    categories that also report OPENED and ACCESSED.
    """

    name = "inotify"

    def __init__(
        self,
        file_paths: Mapping[str, Sequence[str]],
        exclude_paths: Mapping[str, Sequence[str]] | None = None,
        *,
        file_accesses: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ):
        self._rules = [
            _Rule(_parse("file_paths", category, text), category)
            for category, patterns in file_paths.items()
            for text in patterns
        ]
        self._excludes = {
            category: [_parse("exclude_paths", category, text) for text in patterns]
            for category, patterns in (exclude_paths or {}).items()
        }
        self._accesses = frozenset(file_accesses)
        self._mask = _ENTRY_MASK | _WATCH_FLAGS
        if self._accesses:
            self._mask |= _ACCESS_MASK
        self._clock = clock
        self._counters = Counters(self.name, "publisher")
        self._send: trio.MemorySendChannel[Event] | None = None
        self._inotify: INotify | None = None

        # Watched directories by watch descriptor and by path, and the snapshot.
        self._watches: dict[int, _Watch] = {}
        self._wds: dict[bytes, int] = {}
        self._snapshot: dict[bytes, _FileState] = {}
        # Files with IN_MODIFY since their last UPDATED, and files that got an
        # UPDATED at a batch end while still open (see the module docstring).
        self._written: dict[bytes, tuple[str, ...]] = {}
        self._flushed: dict[bytes, tuple[str, ...]] = {}
        # Directory moves whose MOVED_TO may still come, by cookie.
        self._moves: dict[int, _Move] = {}
        self._reads = 0
        # The state before the current batch of each path the batch changed, None
        # for a path that was not in the snapshot.
        self._prior: dict[bytes, _FileState | None] = {}
        # The state last sent of paths whose events were dropped, which the next
        # rescan compares with instead of the snapshot.
        self._stale: dict[bytes, _FileState | None] = {}
        self._rescan_due = False

        self._warnings = LossWarnings(logger)

    def statistics(self) -> Statistics:
        if self._send is not None:
            self._counters.buffered = self._send.statistics().current_buffer_used
        return self._counters.snapshot()

    async def run(
        self,
        send: trio.MemorySendChannel[Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open inotify, watch every pattern, report started, then send events."""
        self._send = send
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as error:
            raise PublisherError(
                f"inotify: cannot open an instance: {error.strerror}"
                " (check fs.inotify.max_user_instances)"
            ) from None
        fd = self._inotify.fileno()
        try:
            self._snapshot = await trio.to_thread.run_sync(self._walk_patterns)
            logger.info(
                "inotify started: watched directories: %d, patterns: %d",
                len(self._watches),
                len(self._rules),
            )
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_warnings)
                await self._read_loop(fd)
                nursery.cancel_scope.cancel()
        finally:
            self._warnings.flush(self._clock(), force=True)
            trio.lowlevel.notify_closing(fd)
            self._inotify.close()

    async def _read_loop(self, fd: int) -> None:
        while True:
            if self._rescan_due and self._has_room():
                if not await self._rescan():
                    return
            # A due rescan waits for room in the channel, which no file descriptor
            # signals, so the wait for events ends now and then to check it.
            timeout = _RESCAN_POLL if self._rescan_due else math.inf
            with trio.move_on_after(timeout):
                await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            try:
                raw_events = parse_events(data)
            except ValueError as error:
                self._fail("parse_error", 1, "inotify read skipped: %s", error)
                self._rescan_due = True
                continue
            if not await self._handle(raw_events):
                return

    async def _handle(self, raw_events: list[RawEvent]) -> bool:
        """Process and send the events of one read; return False when the receiver
        is gone.

        At an IN_Q_OVERFLOW the rescan runs before the events that follow it, so it
        compares the files with the state as of the overflow. A file whose IN_CREATE
        was lost is then CREATED, even when a later IN_CLOSE_WRITE follows.
        """
        pending: list[RawEvent] | None = raw_events
        while pending is not None:
            batch, pending = self._process(pending)
            if not self._send_batch(batch):
                return False
            if pending is not None and not await self._rescan():
                return False
        return True

    def _send_batch(self, batch: _Batch) -> bool:
        """Send a batch; return False when the receiver is gone.

        When some events did not fit in the channel, the paths that the batch
        changed get back their state from before it, and a rescan is due.
        """
        dropped = self._emit(batch.events)
        if dropped is None:
            return False
        if dropped:
            for path, state in self._prior.items():
                self._stale.setdefault(path, state)
            self._rescan_due = True
        return True

    async def _rescan(self) -> bool:
        """Walk every pattern again and send the differences from the state last
        sent; return False when the receiver is gone.

        Differences that do not fit in the channel are left for the next rescan.
        """
        self._rescan_due = False
        events, baseline = await trio.to_thread.run_sync(self._reconcile)
        dropped = self._emit(events)
        if dropped is None:
            return False
        for event in dropped:
            path = event.fields["target_path"]
            self._stale.setdefault(path, baseline.get(path))
        if dropped:
            self._rescan_due = True
        return True

    def _has_room(self) -> bool:
        """Return whether the channel is at most half full, or closed, so that a
        rescan may send its events."""
        assert self._send is not None
        channel = self._send.statistics()
        if channel.open_receive_channels == 0:
            return True  # The next send reports the closed channel.
        if channel.max_buffer_size == 0:
            return channel.tasks_waiting_receive > 0
        return channel.current_buffer_used < max(1, channel.max_buffer_size / 2)

    def _emit(self, events: Iterable[Event]) -> list[Event] | None:
        """Send events without blocking; return those that did not fit, or None
        when the receiver is gone."""
        assert self._send is not None
        dropped: list[Event] = []
        try:
            for event in events:
                try:
                    self._send.send_nowait(event)
                except trio.WouldBlock:
                    dropped.append(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    logger.info("inotify stopping: the file_events channel is closed")
                    return None
                else:
                    self._counters.events += 1
        finally:
            if dropped:
                message = (
                    "inotify dropped events because the event channel is full,"
                    " so watched paths are rescanned when it has room"
                )
                self._fail("queue_full", len(dropped), message)
        return dropped

    async def _flush_warnings(self) -> None:
        while True:
            await trio.sleep(_FLUSH_INTERVAL)
            self._warnings.flush(self._clock())

    # Turning one read into events

    def _process(
        self, raw_events: list[RawEvent]
    ) -> tuple[_Batch, list[RawEvent] | None]:
        """Turn events into a batch up to the first IN_Q_OVERFLOW; return the batch
        and the events after the overflow, or None when there was none."""
        self._reads += 1
        self._prior = {}
        batch = _Batch()
        rest = None
        for index, raw in enumerate(raw_events):
            if raw.mask & flags.Q_OVERFLOW:
                self._overflow()
                rest = raw_events[index + 1 :]
                raw_events = raw_events[: index + 1]
                break
            if raw.mask & flags.IGNORED:
                self._forget(raw.wd, batch)
            elif raw.wd not in self._watches:
                pass  # Queued before its watch was removed.
            elif raw.name:
                self._handle_entry(self._watches[raw.wd], raw, batch)
            elif raw.mask & flags.MOVE_SELF:
                self._moved_self(raw.wd, batch)
            # Other events on a watched directory itself (no name) are skipped,
            # because its parent's watch reports them when a pattern matches.
        last = raw_events[-1] if raw_events else None
        self._settle_moves(last, batch)
        self._flush_written(batch)
        return batch, rest

    def _handle_entry(self, watch: _Watch, raw: RawEvent, batch: _Batch) -> None:
        path = os.path.join(watch.path, raw.name)
        categories, children = self._classify(watch, raw.name, path)
        is_dir = bool(raw.mask & flags.ISDIR)
        mask = raw.mask
        if mask & flags.CREATE:
            if categories:
                self._created(path, categories, batch)
            if is_dir and children:
                roots = [(path, rule, depth) for rule, depth in children]
                self._add_tree(roots, batch)
        if mask & flags.MODIFY and categories:
            self._written[path] = categories
        if mask & flags.ATTRIB and categories:
            self._record(path, categories)
            self._add(batch, "ATTRIBUTES_MODIFIED", path, categories)
        if mask & flags.CLOSE_WRITE and categories:
            written = self._written.pop(path, None)
            flushed = self._flushed.pop(path, None)
            if written or flushed:
                self._record(path, categories)
                self._add(batch, "UPDATED", path, categories)
        if mask & (flags.OPEN | flags.ACCESS) and not is_dir:
            action = "OPENED" if mask & flags.OPEN else "ACCESSED"
            opened = tuple(c for c in categories if c in self._accesses)
            if opened:
                self._add(batch, action, path, opened)
        if mask & flags.DELETE:
            self._gone(path, "DELETED", categories, 0, batch)
            if is_dir:
                self._unmap(path, batch)
        if mask & flags.MOVED_FROM:
            self._gone(path, "MOVED_FROM", categories, raw.cookie, batch)
            if is_dir:
                rules = frozenset(children)
                wd = self._wds.get(path)
                move = _Move(path, rules, self._reads, wd, categories)
                self._moves[raw.cookie] = move
        if mask & flags.MOVED_TO:
            if is_dir:
                self._moved_in(raw.cookie, path, children, categories, batch)
            else:
                self._arrived(path, categories, raw.cookie, batch)

    def _classify(
        self, watch: _Watch, name: bytes, path: bytes
    ) -> tuple[tuple[str, ...], list[tuple[int, int]]]:
        """Return the categories that report an entry, and the (rule, depth) pairs to
        watch it with when it is a directory."""
        categories: list[str] = []
        children: list[tuple[int, int]] = []
        for rule_index, depth in watch.rules:
            rule = self._rules[rule_index]
            reported, child_depth = rule.pattern.step(depth, name)
            if reported and rule.category not in categories:
                if not self._excluded(rule.category, path):
                    categories.append(rule.category)
            if child_depth is not None:
                children.append((rule_index, child_depth))
        return tuple(categories), children

    def _excluded(self, category: str, path: bytes) -> bool:
        return any(
            pattern.matches(path) for pattern in self._excludes.get(category, ())
        )

    def _created(self, path: bytes, categories: tuple[str, ...], batch: _Batch) -> None:
        known = self._snapshot.get(path)
        state = self._record(path, categories)
        if known is not None and state is not None and known.inode == state.inode:
            # Already reported by the listing of a directory watched moments ago.
            return
        self._add(batch, "CREATED", path, categories)

    def _arrived(
        self, path: bytes, categories: tuple[str, ...], cookie: int, batch: _Batch
    ) -> None:
        if categories:
            self._record(path, categories)
            self._add(batch, "MOVED_TO", path, categories, cookie)

    def _gone(
        self,
        path: bytes,
        action: str,
        categories: tuple[str, ...],
        cookie: int,
        batch: _Batch,
    ) -> None:
        known = self._snapshot.get(path)
        self._set_state(path, None)
        self._written.pop(path, None)
        self._flushed.pop(path, None)
        if categories:
            self._add(batch, action, path, categories, cookie, known)

    def _flush_written(self, batch: _Batch) -> None:
        for path, categories in self._written.items():
            self._record(path, categories)
            self._add(batch, "UPDATED", path, categories)
            self._flushed[path] = categories
        self._written.clear()

    def _add(
        self,
        batch: _Batch,
        action: str,
        path: bytes,
        categories: tuple[str, ...],
        cookie: int = 0,
        known: _FileState | None = None,
    ) -> None:
        now = int(self._clock())
        for category in categories:
            key = (path, category)
            repeated = batch.last_action.get(key) == action
            batch.last_action[key] = action
            if repeated and action in ("UPDATED", "ATTRIBUTES_MODIFIED"):
                continue
            batch.events.append(_event(action, now, path, category, cookie, known))

    # Failures

    def _overflow(self) -> None:
        self._counters.overflows += 1
        self._fail(
            "overflow",
            1,
            "inotify event queue overflowed and events were lost, so watched paths"
            " are rescanned (raise fs.inotify.max_queued_events)",
        )

    def _watch_failed(self, directory: bytes, error: OSError) -> None:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return  # Removed between listing and watching. Its parent reports that.
        if error.errno == errno.ENOSPC:
            self._fail(
                "watch_limit",
                1,
                "inotify watch limit reached at %s: raise fs.inotify.max_user_watches",
                fs_text(directory),
            )
        else:
            self._fail(
                "watch_failed",
                1,
                "inotify cannot watch %s: %s",
                fs_text(directory),
                error.strerror,
            )

    def _scan_failed(self, error: OSError) -> None:
        if error.errno not in (errno.ENOENT, errno.ENOTDIR):
            path = error.filename
            if isinstance(path, bytes):
                path = fs_text(path)
            self._counters.error(
                f"inotify cannot list {path}: {error.strerror}", int(self._clock())
            )

    def _fail(self, reason: str, count: int, message: str, *args: object) -> None:
        """Count `count` events lost for `reason`, record `message % args` as the last
        error, and log it as a rate-limited WARNING."""
        now = self._clock()
        self._counters.drop(reason, count)
        self._counters.error(message % args, int(now))
        self._warnings.lost(reason, count, now, message, *args)


def _parse(option: str, category: str, text: str) -> WatchPattern:
    try:
        return parse_pattern(text)
    except ValueError as error:
        raise PublisherError(f"{option} {category}: {error}") from None


def _event(
    action: str,
    now: int,
    path: bytes,
    category: str,
    cookie: int,
    known: _FileState | None,
) -> Event:
    fields = {"target_path": path, "category": category, "transaction_id": cookie}
    if known is not None:
        # The file is gone, so the snapshot is the only record of what it was.
        fields.update(
            inode=known.inode,
            size=known.size,
            mode=f"{known.mode & 0o7777:04o}",
            uid=known.uid,
            gid=known.gid,
            mtime=known.mtime_ns // 1_000_000_000,
            ctime=known.ctime_ns // 1_000_000_000,
        )
    return Event("inotify", action, now, fields)
