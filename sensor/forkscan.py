"""Splitting a large read-only scan between this process and one forked child.

A full `processes` scan spends most of its time in procfs system calls. Threads cannot
overlap them usefully because each call releases and retakes the GIL, so a forked
child reads half of the items while this process reads the other half, and hands its
rows back through a pipe as marshal data.
"""

from __future__ import annotations

import marshal
import os
from typing import Any, Callable, Sequence

__all__ = ["scan_split"]

_PIPE_CHUNK = 1 << 20


def scan_split(
    items: Sequence[Any],
    scan: Callable[[Sequence[Any]], list[Any]],
    *,
    minimum: int,
) -> list[Any]:
    """Return `scan(items)`, computed in two halves on two CPUs when worth it.

    `scan` must only read, and its results must be marshal-able (None, int, str,
    bytes, and lists, tuples and dicts of them). Below `minimum` items, on a single
    CPU, or when fork fails, everything runs here. When the child fails, this
    process scans the child's half itself.

    NOTE: the child runs `scan` in a copy of a process that may have other threads.
    It takes no lock that those threads use, but Python 3.12 and newer warn about any
    fork of a threaded process (DeprecationWarning).
    """
    if len(items) < minimum or (os.cpu_count() or 1) < 2:
        return scan(items)
    half = len(items) // 2
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return scan(items)
    try:
        child = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return scan(items)
    if child == 0:
        _run_child(read_fd, write_fd, items[half:], scan)

    os.close(write_fd)
    try:
        mine = scan(items[:half])
        data = _read_all(read_fd)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(child, 0)
    if status != 0:
        return mine + scan(items[half:])
    try:
        return mine + marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return mine + scan(items[half:])


def _run_child(
    read_fd: int, write_fd: int, items: Sequence[Any], scan: Callable
) -> None:
    # os._exit skips the parent's atexit handlers and buffered-file flushes, which
    # must not run twice, and ends the child whatever happens in between.
    status = 1
    try:
        os.close(read_fd)
        view = memoryview(marshal.dumps(scan(items)))
        while view:
            written = os.write(write_fd, view)
            view = view[written:]
        status = 0
    finally:
        os._exit(status)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, _PIPE_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)
