"""The inotify publisher's pattern walks and its snapshot of reported entries."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import NamedTuple

from sensor.events import Event
from sensor.paths import nearest_directory, scan_directory
from sensor.text import fs_text

__all__ = ["SnapshotMixin"]

logger = logging.getLogger(__name__)


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


# Defined here rather than beside `_add` in publishers.inotify because `_reconcile`
# builds one, and publishers.inotify imports this module.
@dataclass
class _Batch:
    """Events produced from one read, with what coalescing needs."""

    events: list[Event] = field(default_factory=list)
    last_action: dict[tuple[bytes, str], str] = field(default_factory=dict)


class SnapshotMixin:
    """Methods of InotifyPublisher that walk the patterns and keep the snapshot.

    They use the state that InotifyPublisher.__init__ sets up and call methods of
    InotifyPublisher and WatchesMixin, such as `_add` and `_watch`.
    """

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
