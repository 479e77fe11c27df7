"""File names and other raw kernel bytes as SQL text.

SQLite text must be valid UTF-8, but a Linux file name is any byte string and may
contain control characters. `fs_text` writes each byte that is an ASCII control
character or not part of valid UTF-8 as `\\xNN`, and leaves every other character,
backslashes included, as it is. A name therefore reads as `ls` and `find` print it
(systemd's `dev-disk-by\\x2duuid-...` names among them), and no name can move a
terminal's cursor.

The escape is not unique: the name of four ASCII characters `\\xff` and the name of the
one byte 0xff render alike. So `candidate_paths` returns both readings of a text, a
table returns a row for each that exists, and SQLite's own check of the WHERE clause
keeps the rows whose rendered path matches. Such twins then both appear, rather than
one hiding the other.
"""

from __future__ import annotations

import os
import re

__all__ = ["candidate_paths", "fs_text", "sql_text"]

_SPECIAL = re.compile(rb"[\x00-\x1f\x7f]")
_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]}
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def fs_text(name: bytes | str) -> str:
    """Return a file name as valid UTF-8 text, escaped as the module describes.

    A str is taken as the operating system gave it (undecodable bytes held as
    surrogates, as `os.fsdecode` leaves them).
    """
    if isinstance(name, str):
        name = os.fsencode(name)
    if _SPECIAL.search(name) is None:
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return name.decode("utf-8", "backslashreplace").translate(_CONTROL)


def candidate_paths(text: str) -> list[bytes]:
    """Return the file names that `fs_text` may have rendered as `text`.

    The literal reading comes first. When the text contains `\\xNN` escapes, the
    name with those escapes turned back into bytes follows.
    """
    literal = os.fsencode(text)
    decoded = _ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), literal)
    return [literal] if decoded == literal else [literal, decoded]


def sql_text(text: str) -> str:
    """Return SQL text with undecodable bytes, held as surrogates, written as `\\xNN`.

    A shell passes bytes that are not UTF-8 in a command-line argument through as
    surrogates, which SQLite cannot take. Only those bytes are rewritten, so the rest
    of the statement keeps its backslashes.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
