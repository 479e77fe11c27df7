"""File path patterns in osquery's glob syntax, and the directories they watch.

A pattern is an absolute path whose components may hold wildcards: `%` or `*` matches
any run of characters within one component and `?` matches one character. A bracket
expression matches one character of a set, as in fnmatch and glob(3): `[ab]` matches
`a` or `b`, `[a-z]` a range, and `[!ab]` any character but those. A `]` right after
`[` or `[!` is a member, and inside brackets `%`, `*` and `?` are literal, so `[[]`
matches a literal `[`. An unclosed `[` is an error. A last component of `%%` or `**`
means "everything below, recursively", and a trailing `/` means "the entries of this
directory", as `/%` does. Without wildcards a pattern names one file or directory. So
`/etc/hosts` reports that file, `/etc/%.conf` the matching entries of /etc,
`/etc/rc[0-6].d/%` the entries of the runlevel directories, and
`/var/www/%/htdocs/%%` everything below each site's htdocs.

Wildcards match characters, not bytes. A component with a wildcard, and each name
matched against it, is decoded with `os.fsdecode`. So `?` and `[é]` match both bytes
of a UTF-8 `é`, and a byte that is not valid UTF-8 counts as one character.

A component that can only match names longer than NAME_MAX (255 bytes on Linux) is an
error. So is a recursive pattern whose levels all match any name, such as `/**` or
`/%/%%`, because it would watch /proc, /sys and every other directory until inotify
runs out of watches.

A pattern is matched one component at a time, starting at `/`. The depth of a
directory is the number of components between it and `/`. `WatchPattern.step`
decides, for an entry of a directory at some depth, whether the pattern reports the
entry and whether, when the entry is a directory, it must be watched too. Names are
bytes throughout, because a Linux file name need not be UTF-8.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

__all__ = [
    "WatchPattern",
    "parse_pattern",
    "expand",
    "nearest_directory",
    "scan_directory",
]

_RECURSIVE = (b"%%", b"**")
# The maximum length of one file name in bytes, from <linux/limits.h>.
_NAME_MAX = 255
_WILDCARDS = re.compile(rb"[%*?[]")
# A component made of `%` and `*` only, which matches every name.
_ANY_NAME = re.compile(rb"[%*]+")


@dataclass(frozen=True)
class WatchPattern:
    """A parsed pattern: one glob per path component below `/`.

    `recursive` is true when the pattern ended in `%%` or `**`, which is then not one
    of `levels`: every entry below the directory that `levels` names is reported.
    """

    text: str
    levels: tuple[bytes, ...]
    recursive: bool
    _matchers: tuple[Callable[[bytes], bool], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        matchers = tuple(_compile(level) for level in self.levels)
        object.__setattr__(self, "_matchers", matchers)

    @property
    def directory_depth(self) -> int:
        """Depth of the directories whose entries the pattern reports."""
        return len(self.levels) if self.recursive else len(self.levels) - 1

    @property
    def literal_depth(self) -> int:
        """Number of leading directory levels that hold no wildcard."""
        depth = 0
        while depth < self.directory_depth and not _WILDCARDS.search(
            self.levels[depth]
        ):
            depth += 1
        return depth

    def start(self) -> bytes:
        """Return the deepest directory that every match lies below."""
        return b"/" + b"/".join(self.levels[: self.literal_depth])

    def step(self, depth: int, name: bytes) -> tuple[bool, int | None]:
        """Return (reported, child depth) for entry `name` of a directory at `depth`.

        `reported` is true when events on the entry belong to this pattern. The child
        depth is the depth at which the entry, if it is a directory, must be watched,
        or None when nothing below it can match.
        """
        if depth >= len(self.levels):
            # Below the base of a recursive pattern, where everything matches.
            return True, depth
        if not self._matchers[depth](name):
            return False, None
        if depth == len(self.levels) - 1 and not self.recursive:
            return True, None
        return False, depth + 1

    def matches(self, path: bytes) -> bool:
        """Return whether the pattern reports events on an absolute path."""
        names = [name for name in path.split(b"/") if name]
        depth: int | None = 0
        for index, name in enumerate(names):
            reported, depth = self.step(depth, name)
            if index == len(names) - 1:
                return reported
            if depth is None:
                return False
        return False


def parse_pattern(pattern: str) -> WatchPattern:
    """Parse a pattern, raising ValueError with a one-line reason when it is invalid."""
    if not pattern:
        raise ValueError("file path pattern is empty")
    if "\0" in pattern:
        raise ValueError(f"file path pattern {pattern!r} contains a NUL character")
    if not pattern.startswith("/"):
        raise ValueError(
            f"file path pattern {pattern!r} is not absolute: start it with /"
        )

    names = [name for name in os.fsencode(pattern).split(b"/") if name]
    if pattern.endswith("/"):
        names.append(b"%")
    for index, name in enumerate(names):
        if name in (b".", b".."):
            raise ValueError(
                f"file path pattern {pattern!r} contains {os.fsdecode(name)!r}:"
                " write the path without . or .. components"
            )
        if b"%%" in name or b"**" in name:
            if name not in _RECURSIVE or index != len(names) - 1:
                raise ValueError(
                    f"file path pattern {pattern!r}: a recursive wildcard (%% or **)"
                    " must be the whole last component"
                )
        try:
            _translate(os.fsdecode(name))
        except ValueError:
            raise ValueError(
                f"file path pattern {pattern!r} has an unclosed [ in component"
                f" {os.fsdecode(name)!r}: close it with ] or write [[] for a literal ["
            ) from None
        if _shortest_match(name) > _NAME_MAX:
            raise ValueError(
                f"file path pattern {pattern!r} has a component longer than"
                f" {_NAME_MAX} bytes, the maximum length of a file name (NAME_MAX)"
            )

    recursive = bool(names) and names[-1] in _RECURSIVE
    if recursive:
        names.pop()
        if all(_ANY_NAME.fullmatch(name) for name in names):
            raise ValueError(
                f"file path pattern {pattern!r} watches every directory, /proc and"
                " /sys included, and exhausts inotify watches: name the directories"
                " to watch, such as /etc/**"
            )
    return WatchPattern(pattern, tuple(names), recursive)


def expand(
    pattern: WatchPattern, onerror: Callable[[OSError], None] | None = None
) -> Iterator[tuple[bytes, int, list[bytes]]]:
    """Yield (directory, depth, reported names) for every directory the pattern watches.

    When the pattern's start directory does not exist, its nearest existing ancestor
    comes first, so that the start is seen when it is created. Symbolic links to
    directories are not followed below the start. Unreadable directories are passed to
    `onerror` and yielded with no names.
    """
    stack = [nearest_directory(pattern)]
    while stack:
        directory, depth = stack.pop()
        reported, children = scan_directory(pattern, directory, depth, onerror)
        yield directory, depth, reported
        stack.extend(children)


def nearest_directory(pattern: WatchPattern) -> tuple[bytes, int]:
    """Return the start directory, or its nearest existing ancestor, with its depth."""
    depth = pattern.literal_depth
    while depth > 0:
        directory = b"/" + b"/".join(pattern.levels[:depth])
        if os.path.isdir(directory):
            return directory, depth
        depth -= 1
    return b"/", 0


def scan_directory(
    pattern: WatchPattern,
    directory: bytes,
    depth: int,
    onerror: Callable[[OSError], None] | None = None,
) -> tuple[list[bytes], list[tuple[bytes, int]]]:
    """List one watched directory: the names it reports and the (subdirectory, depth)
    pairs to watch below it.
    """
    reported: list[bytes] = []
    children: list[tuple[bytes, int]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                is_reported, child_depth = pattern.step(depth, entry.name)
                if is_reported:
                    reported.append(entry.name)
                if child_depth is not None and entry.is_dir(follow_symlinks=False):
                    children.append((entry.path, child_depth))
    except OSError as error:
        if onerror is not None:
            onerror(error)
    return reported, children


def _compile(level: bytes) -> Callable[[bytes], bool]:
    if not _WILDCARDS.search(level):
        return level.__eq__
    regex = re.compile(_translate(os.fsdecode(level)), re.DOTALL)
    return lambda name: regex.fullmatch(os.fsdecode(name)) is not None


def _shortest_match(level: bytes) -> int:
    """Return the length in bytes of the shortest name that a valid component
    matches: `%` and `*` match nothing, and `?` and a bracket expression match one
    character of at least one byte."""
    text = os.fsdecode(level)
    length = 0
    index = 0
    while index < len(text):
        char = text[index]
        index += 1
        if char == "?":
            length += 1
        elif char == "[":
            _, index = _translate_class(text, index)
            length += 1
        elif char not in "%*":
            length += len(os.fsencode(char))
    return length


def _translate(level: str) -> str:
    """Translate the glob of one component to a regular expression.

    Raises ValueError when a `[` is not closed.
    """
    parts = []
    index = 0
    while index < len(level):
        char = level[index]
        index += 1
        if char in "%*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif char == "[":
            regex, index = _translate_class(level, index)
            parts.append(regex)
        else:
            parts.append(re.escape(char))
    return "".join(parts)


def _translate_class(level: str, start: int) -> tuple[str, int]:
    """Translate the bracket expression whose members begin at `start`; return its
    regular expression and the index after its `]`."""
    negated = level[start : start + 1] == "!"
    if negated:
        start += 1
    # The search starts one past `start` because a `]` in first place is a member.
    end = level.find("]", start + 1)
    if end < 0:
        raise ValueError("unclosed [")

    members = level[start:end]
    items = []
    index = 0
    while index < len(members):
        if members[index + 1 : index + 2] == "-" and index + 2 < len(members):
            low, high = members[index], members[index + 2]
            # A reversed range such as z-a matches nothing, as in fnmatch.
            if low <= high:
                items.append(re.escape(low) + "-" + re.escape(high))
            index += 3
        else:
            items.append(re.escape(members[index]))
            index += 1

    if not items:
        # Only reversed ranges: nothing matches, or with `!` any character does.
        return ("." if negated else "(?!)"), end + 1
    return "[" + ("^" if negated else "") + "".join(items) + "]", end + 1
