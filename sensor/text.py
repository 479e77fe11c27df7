"""File names as SQL text: a reversible rendering of names that are not UTF-8.

SQLite text must be valid UTF-8, but a Linux file name is any byte string. A byte that
is not part of valid UTF-8 is rendered as the four characters `\\xNN`, the way Python's
`backslashreplace` error handler does, and `candidate_paths` reverses it for lookups.
"""

from __future__ import annotations

import os
import re

__all__ = ["fs_text", "candidate_paths"]

_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def fs_text(name: bytes | str) -> str:
    """Return a file name as valid UTF-8 text, escaping bytes that are not UTF-8."""
    if isinstance(name, str):
        try:
            name.encode("utf-8")
            return name
        except UnicodeEncodeError:
            name = os.fsencode(name)
    return name.decode("utf-8", "backslashreplace")


def candidate_paths(text: str) -> list[bytes]:
    """Return the byte paths that a path written as text may stand for.

    The literal path comes first. When the text contains `\\xNN` escapes, the path
    with those escapes turned back into bytes follows, so a name shown by `fs_text`
    can be typed back into a WHERE clause.
    """
    literal = os.fsencode(text)
    candidates = [literal]
    if b"\\x" in literal:
        decoded = _ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), literal)
        if decoded != literal:
            candidates.append(decoded)
    return candidates
