"""Capture the raw inotify frames that tests/publishers/test_inotify.py replays.

Run as root from the repository root: `.venv/bin/python tests/data/inotify/capture.py`.
It writes file_ops.bin (create, write, chmod, rename, delete, mkdir and a non-UTF-8
name in a watched directory) and overflow.bin (a read from an instance whose queue
overflowed, made with fs.inotify.max_queued_events lowered to 4 and then restored).
"""

import os
import tempfile

from inotify_simple import INotify, flags, masks

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_QUEUED = "/proc/sys/fs/inotify/max_queued_events"


def read_all(inotify):
    data = b""
    while True:
        try:
            chunk = os.read(inotify.fileno(), 65536)
        except BlockingIOError:
            return data
        data += chunk


def file_ops(directory):
    with INotify(nonblocking=True) as inotify:
        inotify.add_watch(directory, masks.ALL_EVENTS & ~(flags.OPEN | flags.ACCESS))
        path = os.path.join(directory, "a.txt")
        with open(path, "wb") as file:
            file.write(b"hello\n")
        os.chmod(path, 0o600)
        os.rename(path, os.path.join(directory, "b.txt"))
        os.unlink(os.path.join(directory, "b.txt"))
        os.mkdir(os.path.join(directory, "sub"))
        with open(os.path.join(os.fsencode(directory), b"caf\xe9"), "wb"):
            pass
        return read_all(inotify)


def overflow(directory):
    with open(MAX_QUEUED) as file:
        saved = file.read()
    try:
        with open(MAX_QUEUED, "w") as file:
            file.write("4")
        inotify = INotify(nonblocking=True)
    finally:
        with open(MAX_QUEUED, "w") as file:
            file.write(saved)
    with inotify:
        inotify.add_watch(directory, flags.CREATE)
        for index in range(10):
            open(os.path.join(directory, f"f{index}"), "wb").close()
        return read_all(inotify)


def main():
    with tempfile.TemporaryDirectory() as directory:
        frames = {"file_ops.bin": file_ops(directory)}
    with tempfile.TemporaryDirectory() as directory:
        frames["overflow.bin"] = overflow(directory)
    for name, data in frames.items():
        with open(os.path.join(HERE, name), "wb") as file:
            file.write(data)


if __name__ == "__main__":
    main()
