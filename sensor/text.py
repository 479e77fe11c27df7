"""File names and other raw kernel bytes as SQL text, in a reversible escaped form.

SQLite text must be valid UTF-8, but a Linux file name is any byte string and may
contain control characters. `fs_text` writes a backslash as two backslashes, and a
byte that is an ASCII control character or not part of valid UTF-8 as `\\xNN`.
`path_bytes` reverses that exactly, so a name shown in a result can be typed back into
a WHERE clause, two different names never render alike, and no name can move a
terminal's cursor.
"""

from __future__ import annotations

import os
import re

__all__ = ["fs_text", "path_bytes", "sql_text"]

_SPECIAL = re.compile(rb"[\x00-\x1f\x7f\\]")
_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]}
_ESCAPE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")


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
    escaped = name.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return escaped.translate(_CONTROL)


def _unescape(match: re.Match[bytes]) -> bytes:
    escape = match.group(1)
    if escape == b"\\":
        return b"\\"
    return bytes([int(escape[1:], 16)])


def path_bytes(text: str) -> bytes:
    """Return the file name that `fs_text` rendered as `text`.

    A backslash that starts neither `\\\\` nor `\\xNN` is kept as it is, so a name
    typed by hand with a lone backslash still finds its file.
    """
    return _ESCAPE.sub(_unescape, os.fsencode(text))


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
