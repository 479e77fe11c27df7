"""The inotify publisher's directory watches, and how they follow moves and deletes.

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
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from inotify_simple import flags

from publishers.inotify_frames import RawEvent
from publishers.inotify_snapshot import _Batch, _FileState, _found
from sensor.paths import WatchPattern, nearest_directory, scan_directory
from sensor.text import fs_text

__all__ = ["WatchesMixin"]

logger = logging.getLogger(__name__)

# Attempts to watch a pattern's nearest existing directory again when each attempt
# finds it gone before inotify_add_watch.
_REWATCH_ATTEMPTS = 3


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


class WatchesMixin:
    """Methods of InotifyPublisher that watch directories and follow their moves.

    They use the state that InotifyPublisher.__init__ sets up and call methods of
    InotifyPublisher and SnapshotMixin, such as `_add`, `_fail` and `_walk`.
    """

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
