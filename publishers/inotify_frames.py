"""Parsing of the frames that a read from an inotify file descriptor returns."""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["RawEvent", "parse_events"]

# struct inotify_event from <sys/inotify.h>: wd, mask, cookie, len, then `len` bytes
# of NUL-padded name.
_HEADER = struct.Struct("=iIII")


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
