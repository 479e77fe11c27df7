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
IN_CREATE happened before the watch existed. A snapshot of (inode, size, mtime_ns,
mode) per reported entry suppresses the duplicate when IN_CREATE arrives as well.
The same snapshot reconciles state after an IN_Q_OVERFLOW: all patterns are walked
again, watches re-added, and differences reported as CREATED, UPDATED,
ATTRIBUTES_MODIFIED or DELETED.

A watched directory that moves keeps its watch descriptor, so its watch must follow
it or end. A move between two watched places arrives as MOVED_FROM and MOVED_TO on
the parents. The watches below are then renamed when the same (pattern, depth) pairs
apply at both places, and otherwise removed and added again at the new place. The
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
import os
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
    mode: int
    categories: tuple[str, ...]

    def content(self) -> tuple[int, int, int]:
        return self.inode, self.size, self.mtime_ns


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
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            try:
                raw_events = parse_events(data)
            except ValueError as error:
                self._fail("parse_error", 1, "inotify read skipped: %s", error)
                continue
            batch, overflowed = self._process(raw_events)
            if not self._emit(batch.events):
                return
            if overflowed:
                events = await trio.to_thread.run_sync(self._reconcile)
                if not self._emit(events):
                    return

    def _emit(self, events: Iterable[Event]) -> bool:
        """Send events without blocking; return False when the receiver is gone."""
        assert self._send is not None
        dropped = 0
        try:
            for event in events:
                try:
                    self._send.send_nowait(event)
                except trio.WouldBlock:
                    dropped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    logger.info("inotify stopping: the file_events channel is closed")
                    return False
                else:
                    self._counters.events += 1
        finally:
            if dropped:
                message = "inotify dropped events because the event channel is full"
                self._fail("queue_full", dropped, message)
        return True

    async def _flush_warnings(self) -> None:
        while True:
            await trio.sleep(_FLUSH_INTERVAL)
            self._warnings.flush(self._clock())

    # Turning one read into events

    def _process(self, raw_events: list[RawEvent]) -> tuple[_Batch, bool]:
        self._reads += 1
        batch = _Batch()
        overflowed = False
        for raw in raw_events:
            if raw.mask & flags.Q_OVERFLOW:
                overflowed = True
                self._overflow()
            elif raw.mask & flags.IGNORED:
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
        return batch, overflowed

    def _handle_entry(self, watch: _Watch, raw: RawEvent, batch: _Batch) -> None:
        path = os.path.join(watch.path, raw.name)
        categories, children = self._classify(watch, raw.name, path)
        is_dir = bool(raw.mask & flags.ISDIR)
        mask = raw.mask
        if mask & flags.CREATE:
            if is_dir and children:
                roots = [(path, rule, depth) for rule, depth in children]
                self._add_tree(roots, batch)
            if categories:
                self._created(path, categories, batch)
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
                self._moved_in(raw.cookie, path, children, batch)
            if categories:
                self._record(path, categories)
                self._add(batch, "MOVED_TO", path, categories, raw.cookie)

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

    def _gone(
        self,
        path: bytes,
        action: str,
        categories: tuple[str, ...],
        cookie: int,
        batch: _Batch,
    ) -> None:
        known = self._snapshot.pop(path, None)
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
        for entry, state in found.items():
            known = self._snapshot.get(entry)
            self._snapshot[entry] = state
            if known is None or known.inode != state.inode:
                self._add(batch, "CREATED", entry, state.categories)

    def _moved_in(
        self,
        cookie: int,
        path: bytes,
        children: list[tuple[int, int]],
        batch: _Batch,
    ) -> None:
        move = self._moves.pop(cookie, None)
        if move is not None:
            if move.rules == frozenset(children) and not self._pinned_within(move.path):
                self._rename_tree(move.path, path)
                if move.wd in self._watches:
                    self._watches[move.wd].followed += 1
                return
            self._drop_tree(move.path, batch, cookie, move.categories)
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

    def _rename_tree(self, old: bytes, new: bytes) -> None:
        def renamed(path: bytes) -> bytes:
            return new + path[len(old) :]

        for wd, watch in self._watches.items():
            if _within(watch.path, old):
                self._wds.pop(watch.path, None)
                watch.path = renamed(watch.path)
                self._wds[watch.path] = wd
        for mapping in (self._snapshot, self._written, self._flushed):
            for path in [path for path in mapping if _within(path, old)]:
                mapping[renamed(path)] = mapping.pop(path)

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
        again. `keep` is a (wd, new path) pair for a watch that stays, without
        rules, because a walk is watching the directory at its new path.
        """
        assert self._inotify is not None
        pinned = set()
        for wd, watch in list(self._watches.items()):
            if not _within(watch.path, top):
                continue
            rules = {r for r, d in watch.rules if self._rules[r].pinned(watch.path, d)}
            categories = self._categories(watch.path, rules)
            if watch.path == top:
                categories = [c for c in categories if c not in reported]
            self._add(batch, "MOVED_FROM", watch.path, tuple(categories), cookie)
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
        for mapping in (self._snapshot, self._written, self._flushed):
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

    # Walking patterns: initial watches and the rescan after an overflow

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

    def _reconcile(self) -> list[Event]:
        """Walk every pattern again after lost events and report the differences."""
        assert self._inotify is not None
        old_watches = self._watches
        self._watches, self._wds = {}, {}
        old = self._snapshot
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
        for path, state in self._snapshot.items():
            known = old.get(path)
            if known is None:
                self._add(batch, "CREATED", path, state.categories)
            elif known.inode != state.inode:
                self._add(batch, "DELETED", path, known.categories, known=known)
                self._add(batch, "CREATED", path, state.categories)
            elif known.content() != state.content():
                self._add(batch, "UPDATED", path, state.categories)
            elif known.mode != state.mode:
                self._add(batch, "ATTRIBUTES_MODIFIED", path, state.categories)
        for path, known in old.items():
            if path not in self._snapshot:
                self._add(batch, "DELETED", path, known.categories, known=known)
        logger.info("inotify rescan after overflow: %d changes", len(batch.events))
        return batch.events

    def _record(self, path: bytes, categories: tuple[str, ...]) -> _FileState | None:
        state = _lstat(path, categories)
        if state is None:
            self._snapshot.pop(path, None)
        else:
            self._snapshot[path] = state
        return state

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
            inode=known.inode, size=known.size, mode=f"{known.mode & 0o7777:04o}"
        )
    return Event("inotify", action, now, fields)


def _lstat(path: bytes, categories: tuple[str, ...]) -> _FileState | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return _FileState(st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, categories)


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


def _within(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top.rstrip(b"/") + b"/")
