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
  `file_accesses`, because they fire on every read.
- Repeats of ATTRIBUTES_MODIFIED or UPDATED on one path within a batch are coalesced.

A directory that appears under a pattern (created or moved in) is watched and then
listed, and CREATED is reported for the entries already in it, since their own
IN_CREATE happened before the watch existed. The directory's own row comes first. A
snapshot of (inode, size, mtime_ns, ctime_ns, mode, uid, gid) per reported entry
suppresses the duplicate when IN_CREATE arrives as well.

The same snapshot reconciles state after lost events, in a rescan: all patterns are
walked again, watches re-added, and differences reported as CREATED, UPDATED,
ATTRIBUTES_MODIFIED or DELETED, as `_changes` decides. An IN_Q_OVERFLOW starts a
rescan at once, before the events that follow it in the same read, so the rescan
compares with the state as of the overflow. Events dropped because the channel to
the subscriber was full start a rescan once the channel is at most half full, which
the reader checks every `_RESCAN_POLL` seconds meanwhile. The paths that a batch
with dropped events changed are compared with their state from before that batch,
so the rescan reports those changes again, even the ones whose events were sent.

A watched directory that moves keeps its watch descriptor, so its watch must follow
it or end. A move between two watched places arrives as MOVED_FROM and MOVED_TO on
the parents. The watches below are then renamed when the same (pattern, depth) pairs
apply at both places, and otherwise removed and added again at the new place. Each
entry below the directory that was reported has a row for the move, of its own or
of a directory above it (the moved directory when a pattern reports it), and an
entry that an exclude pattern hid at the old place is CREATED at the new one. The
kernel queues IN_MOVE_SELF on the directory after that pair (fsnotify_move in
include/linux/fsnotify.h), so a MOVED_FROM still unpaired then went to a place that
no pattern watches. A directory whose parent is not watched gets only IN_MOVE_SELF,
and a stored (st_dev, st_ino) per watch tells whether its path still names it.

A directory that left for an unwatched place loses its watches, and events still
queued for them are skipped, so nothing written into the moved copy is reported
under the old path. Each pattern whose start was in the moved tree reports
MOVED_FROM for it, and its nearest existing directory is watched instead, as after
a delete. A directory that moves in from an unwatched place makes
inotify_add_watch return its old watch descriptor, and that watch moves to the new
path.

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
import stat
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import trio
from inotify_simple import INotify, flags

from sensor.errors import PublisherError
from sensor.events import Counters, Event, Statistics
from sensor.paths import WatchPattern, nearest_directory, parse_pattern, scan_directory
from sensor.ratelimit import LossWarnings
from sensor.text import fs_text

__all__ = ["InotifyPublisher", "RawEvent", "parse_events"]

logger = logging.getLogger(__name__)

# struct inotify_event from <sys/inotify.h>: wd, mask, cookie, len, then `len` bytes
# of NUL-padded name.
_HEADER = struct.Struct("=iIII")

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

# Attempts to watch a pattern's nearest existing directory again when each attempt
# finds it gone before inotify_add_watch.
_REWATCH_ATTEMPTS = 3


class RawEvent(NamedTuple):
    """One struct inotify_event. `name` is b"" for the watched directory itself."""

    wd: int
    mask: int
    cookie: int
    name: bytes


def parse_events(data: bytes) -> list[RawEvent]:
    """Parse the bytes of one read from an inotify file descriptor.

    Raises ValueError when the data ends inside an event.
    """
    events = []
    offset = 0
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            raise ValueError(f"inotify data truncated in an event header at {offset}")
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        if offset + length > len(data):
            raise ValueError(f"inotify data truncated in an event name at {offset}")
        name = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(RawEvent(wd, mask, cookie, name))
    return events


class _FileState(NamedTuple):
    """The snapshot's record of one reported entry."""

    inode: int
    size: int
    mtime_ns: int
    # The kernel sets ctime on every change of content or metadata, and no system
    # call sets it to a chosen value, so it reveals a rewrite whose mtime was restored.
    ctime_ns: int
    mode: int
    uid: int
    gid: int
    categories: tuple[str, ...]


@dataclass
class _Watch:
    """A watched directory: its path, (rule, depth) pairs and (st_dev, st_ino)."""

    path: bytes
    identity: tuple[int, int] | None
    rules: set[tuple[int, int]] = field(default_factory=set)
    # Moves already followed to the new path whose IN_MOVE_SELF is still queued.
    followed: int = 0


@dataclass
class _Rule:
    pattern: WatchPattern
    category: str
    literal_depth: int = field(init=False)

    def __post_init__(self) -> None:
        self.literal_depth = self.pattern.literal_depth

    def pinned(self, path: bytes, depth: int) -> bool:
        """Return whether `path`, watched at `depth`, is the pattern's start or an
        ancestor of it, so that it is watched for its path, not for its parent."""
        if depth > self.literal_depth:
            return False
        return path == b"/" + b"/".join(self.pattern.levels[:depth])


class _Move(NamedTuple):
    """A directory's MOVED_FROM whose MOVED_TO may still come."""

    path: bytes
    # The (rule, depth) pairs that applied to it at `path`, from its parent's watch.
    rules: frozenset[tuple[int, int]]
    read: int
    # Its own watch descriptor, or None when it was not watched.
    wd: int | None
    # The categories that its MOVED_FROM was reported in.
    categories: tuple[str, ...]


@dataclass
class _Batch:
    """Events produced from one read, with what coalescing needs."""

    events: list[Event] = field(default_factory=list)
    last_action: dict[tuple[bytes, str], str] = field(default_factory=dict)


class InotifyPublisher:
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
                "inotify watching %d directories for %d patterns",
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
        if mask & (flags.OPEN | flags.ACCESS):
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

    # Directories that appear, move or disappear

    def _add_tree(self, roots: list[tuple[bytes, int, int]], batch: _Batch) -> None:
        """Watch new (directory, rule, depth) roots and everything below them, and
        report the entries found there as CREATED."""
        found = self._walk(roots, batch)
        # Sorted, so a directory's row comes before the rows of its entries.
        for entry, state in sorted(found.items()):
            known = self._snapshot.get(entry)
            self._set_state(entry, state)
            if known is None or known.inode != state.inode:
                self._add(batch, "CREATED", entry, state.categories)

    def _moved_in(
        self,
        cookie: int,
        path: bytes,
        children: list[tuple[int, int]],
        categories: tuple[str, ...],
        batch: _Batch,
    ) -> None:
        """Handle the MOVED_TO of a directory that `categories` report."""
        move = self._moves.pop(cookie, None)
        if move is not None:
            # A directory that has to be watched but was not, because it moved before
            # its IN_CREATE was read, is watched and listed at its new path instead.
            same_rules = move.rules == frozenset(children)
            watched = not children or move.wd in self._watches
            if same_rules and watched and not self._pinned_within(move.path):
                self._rename_tree(move, path, categories, cookie, batch)
                if move.wd in self._watches:
                    self._watches[move.wd].followed += 1
                return
            self._drop_tree(move.path, batch, cookie, move.categories)
        self._arrived(path, categories, cookie, batch)
        if children:
            roots = [(path, rule, depth) for rule, depth in children]
            self._add_tree(roots, batch)

    def _settle_moves(self, last: RawEvent | None, batch: _Batch) -> None:
        """Stop watching directories that were moved away from every pattern.

        IN_MOVE_SELF settles the move of a watched directory, so this only acts when
        that event was not seen. A MOVED_FROM that ends a read may have its MOVED_TO
        at the start of the next read, so it waits one read longer.
        """
        for cookie, move in list(self._moves.items()):
            waiting = (
                move.read == self._reads
                and last is not None
                and last.cookie == cookie
                and last.mask & flags.MOVED_FROM
            )
            if waiting:
                continue
            del self._moves[cookie]
            watch = self._watches.get(move.wd) if move.wd is not None else None
            if watch is not None and watch.path == move.path:
                self._drop_tree(move.path, batch, cookie, move.categories)

    def _moved_self(self, wd: int, batch: _Batch) -> None:
        """Handle IN_MOVE_SELF on a watched directory.

        Any MOVED_TO of the move came before this event, so a MOVED_FROM still
        waiting for one went to a place that no pattern watches.
        """
        watch = self._watches[wd]
        move = self._pop_move(wd)
        if move is not None:
            cookie, categories = move
            self._moved_away(wd, None, batch, cookie, categories)
        elif watch.followed:
            watch.followed -= 1
        elif watch.identity is None or _identity(watch.path) != watch.identity:
            self._moved_away(wd, None, batch)
        # Otherwise the directory is back at its path already, or an overflow's
        # rescan watched it there.

    def _moved_away(
        self,
        wd: int,
        new: bytes | None,
        batch: _Batch,
        cookie: int = 0,
        reported: tuple[str, ...] = (),
    ) -> None:
        """Stop watching the tree at the old path of watch `wd`, which moved to `new`
        or, when `new` is None, to a place no pattern watches."""
        old = self._watches[wd].path
        if new is None:
            logger.info("inotify: watched directory %s was moved away", fs_text(old))
            keep = None
        else:
            logger.info("inotify: %s was moved to %s", fs_text(old), fs_text(new))
            keep = wd, new
        self._drop_tree(old, batch, cookie, reported, keep)

    def _pop_move(self, wd: int) -> tuple[int, tuple[str, ...]] | None:
        """Forget the moves of watch `wd` that wait for a MOVED_TO; return the last
        one's cookie and the categories its MOVED_FROM was reported in."""
        found = None
        for cookie, move in list(self._moves.items()):
            if move.wd == wd:
                del self._moves[cookie]
                found = cookie, move.categories
        return found

    def _categories(self, path: bytes, rules: Iterable[int]) -> list[str]:
        """Return the categories of rules, in rule order, that do not exclude
        `path`."""
        categories = []
        for rule_index in sorted(rules):
            category = self._rules[rule_index].category
            if category not in categories and not self._excluded(category, path):
                categories.append(category)
        return categories

    def _pinned_within(self, top: bytes) -> bool:
        """Return whether a watch in the tree at `top` is on a pattern's literal
        path, which a rename moves the tree off."""
        return any(
            self._rules[rule_index].pinned(watch.path, depth)
            for watch in self._watches.values()
            if _within(watch.path, top)
            for rule_index, depth in watch.rules
        )

    def _rename_tree(
        self,
        move: _Move,
        new: bytes,
        categories: tuple[str, ...],
        cookie: int,
        batch: _Batch,
    ) -> None:
        """Move the watches and entries of a directory moved within the same
        (pattern, depth) pairs to its new path `new`, which `categories` report.

        An entry whose old path had no MOVED_FROM row, on itself or on a directory
        above it, gets one, and likewise MOVED_TO at the new path. So a file is not
        renamed unseen when its directory matches a wildcard level but is not
        reported itself. An entry that an exclude pattern hid at the old path is
        listed and reported as CREATED at the new one.
        """
        old = move.path
        left = self._take_tree(old, {(old, c) for c in move.categories}, cookie, batch)
        self._arrived(new, categories, cookie, batch)

        def renamed(path: bytes) -> bytes:
            return new + path[len(old) :]

        for wd, watch in self._watches.items():
            if _within(watch.path, old):
                self._wds.pop(watch.path, None)
                watch.path = renamed(watch.path)
                self._wds[watch.path] = wd
        for mapping in (self._written, self._flushed, self._stale):
            for path in [path for path in mapping if _within(path, old)]:
                mapping[renamed(path)] = mapping.pop(path)

        if self._excludes:
            found = self._list_tree(new)
        else:
            found = {renamed(path): state for path, state in left.items()}
        covered = {(new, category) for category in categories}
        for entry, state in sorted(found.items()):
            self._set_state(entry, state)
            known = left.get(old + entry[len(new) :])
            for category in state.categories:
                if known is None or category not in known.categories:
                    self._add(batch, "CREATED", entry, (category,))
                elif not _covered(covered, entry, new, category):
                    self._add(batch, "MOVED_TO", entry, (category,), cookie)
                    covered.add((entry, category))

    def _take_tree(
        self,
        top: bytes,
        covered: set[tuple[bytes, str]],
        cookie: int,
        batch: _Batch,
    ) -> dict[bytes, _FileState]:
        """Remove the snapshot's entries at and below `top`, and return them.

        An entry gets a MOVED_FROM row in each category that no (path, category)
        pair in `covered`, on the entry or a directory between it and `top`,
        reports already.
        """
        taken = {path: s for path, s in self._snapshot.items() if _within(path, top)}
        for path, state in sorted(taken.items()):
            self._set_state(path, None)
            for category in state.categories:
                if not _covered(covered, path, top, category):
                    self._add(batch, "MOVED_FROM", path, (category,), cookie, state)
                    covered.add((path, category))
        return taken

    def _list_tree(self, top: bytes) -> dict[bytes, _FileState]:
        """List the watched directories at and below `top`; return the state of
        every entry they report."""
        found: dict[bytes, _FileState] = {}
        for watch in list(self._watches.values()):
            if not _within(watch.path, top):
                continue
            for rule_index, depth in watch.rules:
                rule = self._rules[rule_index]
                reported, _ = scan_directory(
                    rule.pattern, watch.path, depth, self._scan_failed
                )
                for name in reported:
                    path = os.path.join(watch.path, name)
                    if not self._excluded(rule.category, path):
                        _found(found, path, rule.category)
        return found

    def _drop_tree(
        self,
        top: bytes,
        batch: _Batch,
        cookie: int = 0,
        reported: tuple[str, ...] = (),
        keep: tuple[int, bytes] | None = None,
    ) -> None:
        """Stop watching a directory tree that left its place.

        Each pattern whose start was in the tree, or was missing below it, reports
        MOVED_FROM for the directory it was pinned to, unless the parent's watch
        reported it in `reported`. Its nearest existing directory is then watched
        again. An entry of the tree that no such row covers, on itself or on a
        directory above it, gets a MOVED_FROM row of its own. `keep` is a (wd, new
        path) pair for a watch that stays, without rules, because a walk is
        watching the directory at its new path.
        """
        assert self._inotify is not None
        pinned = set()
        covered = {(top, category) for category in reported}
        for wd, watch in list(self._watches.items()):
            if not _within(watch.path, top):
                continue
            rules = {r for r, d in watch.rules if self._rules[r].pinned(watch.path, d)}
            categories = self._categories(watch.path, rules)
            if watch.path == top:
                categories = [c for c in categories if c not in reported]
            self._add(batch, "MOVED_FROM", watch.path, tuple(categories), cookie)
            covered.update((watch.path, category) for category in categories)
            pinned.update(rules)
            if self._wds.get(watch.path) == wd:
                del self._wds[watch.path]
            if keep is not None and wd == keep[0]:
                continue
            del self._watches[wd]
            try:
                self._inotify.rm_watch(wd)
            except OSError:
                pass  # Already gone, so its IN_IGNORED finds no watch.
        self._take_tree(top, covered, cookie, batch)
        for mapping in (self._written, self._flushed):
            for path in [path for path in mapping if _within(path, top)]:
                del mapping[path]

        if keep is not None:
            wd, new = keep
            watch = self._watches[wd]
            watch.path = new
            watch.rules.clear()
            watch.followed += 1
            self._wds[new] = wd
        for rule_index in sorted(pinned):
            self._rewatch(rule_index, batch)

    def _rewatch(self, rule_index: int, batch: _Batch) -> None:
        """Watch a pattern's start, or its nearest existing ancestor, so that the
        start is seen when it returns, and report what the start already contains."""
        pattern = self._rules[rule_index].pattern
        for _ in range(_REWATCH_ATTEMPTS):
            directory, depth = nearest_directory(pattern)
            self._add_tree([(directory, rule_index, depth)], batch)
            wd = self._wds.get(directory)
            if wd is not None and (rule_index, depth) in self._watches[wd].rules:
                return
            if os.path.isdir(directory):
                return  # The watch failed, and _watch_failed counted that.
        self._fail(
            "rewatch_failed",
            1,
            "inotify cannot watch %s again for %s: the directory keeps vanishing",
            fs_text(directory),
            pattern.text,
        )

    def _unmap(self, path: bytes, batch: _Batch) -> None:
        """Forget the watch of a deleted directory at once.

        A directory created under the same name then gets a watch of its own, even
        before the IN_IGNORED of the old one arrives.
        """
        wd = self._wds.get(path)
        if wd is not None:
            self._forget(wd, batch)

    def _forget(self, wd: int, batch: _Batch) -> None:
        """Drop a watch the kernel removed.

        When the directory was a pattern's start or above it, the nearest existing
        ancestor is watched instead, so that the start is seen when it returns.
        """
        watch = self._watches.pop(wd, None)
        if watch is None:
            return
        if self._wds.get(watch.path) == wd:
            del self._wds[watch.path]
        rules = {r for r, d in watch.rules if self._rules[r].pinned(watch.path, d)}
        for rule_index in sorted(rules):
            self._rewatch(rule_index, batch)

    # Walking patterns: initial watches and the rescan after lost events

    def _walk_patterns(self) -> dict[bytes, _FileState]:
        roots = []
        for rule_index, rule in enumerate(self._rules):
            directory, depth = nearest_directory(rule.pattern)
            if depth < rule.pattern.literal_depth:
                logger.info(
                    "inotify watching %s until %s exists",
                    fs_text(directory),
                    rule.pattern.text,
                )
            roots.append((directory, rule_index, depth))
        return self._walk(roots)

    def _walk(
        self, roots: list[tuple[bytes, int, int]], batch: _Batch | None = None
    ) -> dict[bytes, _FileState]:
        """Watch each (directory, rule, depth) root and every directory below it that
        its pattern reaches; return the state of every reported entry found.

        `batch` receives the events of a watched directory found moved here from an
        unwatched place. Without it, as in a full walk, such a directory keeps its
        old path.
        """
        found: dict[bytes, _FileState] = {}
        stack = list(roots)
        while stack:
            directory, rule_index, depth = stack.pop()
            if not self._watch(directory, rule_index, depth, batch):
                continue
            rule = self._rules[rule_index]
            reported, children = scan_directory(
                rule.pattern, directory, depth, self._scan_failed
            )
            for name in reported:
                path = os.path.join(directory, name)
                if not self._excluded(rule.category, path):
                    _found(found, path, rule.category)
            stack.extend(
                (child, rule_index, child_depth) for child, child_depth in children
            )
        return found

    def _watch(
        self, directory: bytes, rule_index: int, depth: int, batch: _Batch | None
    ) -> bool:
        """Watch a directory for a (rule, depth); return False when it already was, or
        when the watch failed."""
        assert self._inotify is not None
        wd = self._wds.get(directory)
        if wd is None:
            try:
                wd = self._inotify.add_watch(directory, self._mask)
            except OSError as error:
                self._watch_failed(directory, error)
                return False
            watch = self._watches.get(wd)
            if watch is None:
                self._watches[wd] = _Watch(directory, _identity(directory))
            elif watch.path == directory:
                pass
            elif batch is not None and _identity(watch.path) != watch.identity:
                # The directory moved here from a place no pattern watches, and
                # its IN_MOVE_SELF is still queued.
                self._moved_away(wd, directory, batch)
            else:
                # Another path reaches the same directory (a bind mount or a
                # symbolic link in a pattern): events keep the first path.
                logger.debug(
                    "inotify: %s is also %s", fs_text(directory), fs_text(watch.path)
                )
            self._wds[directory] = wd
        watch = self._watches[wd]
        if (rule_index, depth) in watch.rules:
            return False
        watch.rules.add((rule_index, depth))
        return True

    def _reconcile(self) -> tuple[list[Event], dict[bytes, _FileState]]:
        """Walk every pattern again after lost events and report the differences
        from the state last sent; return the events and that state."""
        assert self._inotify is not None
        old_watches = self._watches
        self._watches, self._wds = {}, {}
        old = dict(self._snapshot)
        for path, state in self._stale.items():
            if state is None:
                old.pop(path, None)
            else:
                old[path] = state
        self._stale = {}
        self._snapshot = self._walk_patterns()
        self._written.clear()
        self._flushed.clear()
        self._moves.clear()
        for wd in old_watches.keys() - self._watches.keys():
            try:
                self._inotify.rm_watch(wd)
            except OSError:
                pass  # The directory is gone and so is its watch.

        batch = _Batch()
        # Sorted, so a directory's row comes before the rows of its entries.
        for path, state in sorted(self._snapshot.items()):
            known = old.get(path)
            if known is None:
                self._add(batch, "CREATED", path, state.categories)
            elif known.inode != state.inode:
                self._add(batch, "DELETED", path, known.categories, known=known)
                self._add(batch, "CREATED", path, state.categories)
            else:
                for action in _changes(known, state):
                    self._add(batch, action, path, state.categories)
        for path, known in sorted(old.items()):
            if path not in self._snapshot:
                self._add(batch, "DELETED", path, known.categories, known=known)
        logger.info("inotify rescan: %d changes", len(batch.events))
        return batch.events, old

    def _record(self, path: bytes, categories: tuple[str, ...]) -> _FileState | None:
        state = _lstat(path, categories)
        self._set_state(path, state)
        return state

    def _set_state(self, path: bytes, state: _FileState | None) -> None:
        """Store the state of a path in the snapshot, or remove it when None, and
        keep the state before the batch in case the batch's events are dropped."""
        if path not in self._prior:
            self._prior[path] = self._snapshot.get(path)
        if state is None:
            self._snapshot.pop(path, None)
        else:
            self._snapshot[path] = state

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


def _lstat(path: bytes, categories: tuple[str, ...]) -> _FileState | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return _FileState(
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        categories,
    )


def _changes(known: _FileState, state: _FileState) -> list[str]:
    """Return the actions that tell how an entry that kept its inode changed.

    A regular file whose size, mtime or ctime changed is UPDATED, so it is hashed
    again: a same-size rewrite with a restored mtime still changes ctime. A change of
    mode, uid or gid is ATTRIBUTES_MODIFIED as well. Any other entry is UPDATED when
    its size or mtime changed, and ATTRIBUTES_MODIFIED when only its ctime, mode,
    uid or gid did.
    """
    ctime_changed = known.ctime_ns != state.ctime_ns
    updated = (known.size, known.mtime_ns) != (state.size, state.mtime_ns)
    if stat.S_ISREG(state.mode) and ctime_changed:
        updated = True
    attributes = (known.mode, known.uid, known.gid)
    modified = attributes != (state.mode, state.uid, state.gid)

    actions = []
    if updated:
        actions.append("UPDATED")
    if modified or (ctime_changed and not updated):
        actions.append("ATTRIBUTES_MODIFIED")
    return actions


def _found(found: dict[bytes, _FileState], path: bytes, category: str) -> None:
    state = found.get(path)
    if state is None:
        state = _lstat(path, ())
        if state is None:
            return
    if category not in state.categories:
        found[path] = state._replace(categories=state.categories + (category,))


def _identity(path: bytes) -> tuple[int, int] | None:
    """Return the (st_dev, st_ino) of the directory that `path` names now, following
    symbolic links as inotify_add_watch does, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _covered(
    covered: set[tuple[bytes, str]], path: bytes, top: bytes, category: str
) -> bool:
    """Return whether `covered` has `category` on `path` or a directory between it
    and `top`."""
    while True:
        if (path, category) in covered:
            return True
        if len(path) <= len(top):
            return False
        path = os.path.dirname(path)


def _within(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top.rstrip(b"/") + b"/")
