import errno
import logging
import os
import re
import struct
from pathlib import Path

import pytest
import trio
from inotify_simple import flags

from publishers.inotify import InotifyPublisher, RawEvent, parse_events
from sensor.errors import PublisherError

DATA = Path(__file__).parent.parent / "data" / "inotify"
MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")

# How long a test waits for inotify before it fails. Events usually arrive within
# milliseconds, so this only bounds a broken run.
TIMEOUT = 10


def test_parse_events_captured_file_ops():
    events = parse_events((DATA / "file_ops.bin").read_bytes())
    assert [(event.mask & ~flags.ISDIR, event.name) for event in events] == [
        (flags.CREATE, b"a.txt"),
        (flags.MODIFY, b"a.txt"),
        (flags.CLOSE_WRITE, b"a.txt"),
        (flags.ATTRIB, b"a.txt"),
        (flags.MOVED_FROM, b"a.txt"),
        (flags.MOVED_TO, b"b.txt"),
        (flags.DELETE, b"b.txt"),
        (flags.CREATE, b"sub"),
        (flags.CREATE, b"caf\xe9"),
        (flags.CLOSE_WRITE, b"caf\xe9"),
    ]
    assert events[7].mask & flags.ISDIR
    assert events[4].cookie != 0
    assert events[4].cookie == events[5].cookie
    assert {event.wd for event in events} == {1}


def test_parse_events_captured_overflow():
    events = parse_events((DATA / "overflow.bin").read_bytes())
    assert events[-1] == RawEvent(-1, flags.Q_OVERFLOW, 0, b"")
    assert all(event.mask == flags.CREATE for event in events[:-1])


def test_parse_events_built_overflow():
    frame = struct.pack("=iIII", -1, flags.Q_OVERFLOW, 0, 0)
    named = struct.pack("=iIII", 3, flags.CREATE, 0, 16) + b"x.conf".ljust(16, b"\0")
    assert parse_events(named + frame) == [
        RawEvent(3, flags.CREATE, 0, b"x.conf"),
        RawEvent(-1, flags.Q_OVERFLOW, 0, b""),
    ]


def test_parse_events_empty():
    assert parse_events(b"") == []


@pytest.mark.parametrize("size", [4, 16 + 8])
def test_parse_events_truncated(size):
    data = struct.pack("=iIII", 1, flags.CREATE, 0, 16) + b"name".ljust(16, b"\0")
    with pytest.raises(ValueError, match="truncated"):
        parse_events(data[:size])


def test_publisher_rejects_bad_pattern():
    with pytest.raises(PublisherError, match="file_paths etc: .* is not absolute"):
        InotifyPublisher({"etc": ["etc/hosts"]})


def test_publisher_rejects_unclosed_bracket():
    with pytest.raises(PublisherError) as error:
        InotifyPublisher({"etc": ["/etc/%"]}, {"etc": ["/etc/[abc"]})
    assert str(error.value).startswith("exclude_paths etc: file path pattern")
    assert "unclosed [ in component '[abc'" in str(error.value)


class Collector:
    """Receives every event a publisher sends, for tests to wait on."""

    def __init__(self, receive):
        self.receive = receive
        self.events = []

    async def run(self):
        async for event in self.receive:
            self.events.append(event)

    def seen(self, action, path):
        return any(
            event.action == action and event.fields["target_path"] == os.fsencode(path)
            for event in self.events
        )

    def actions(self, path):
        path = os.fsencode(path)
        return [e.action for e in self.events if e.fields["target_path"] == path]

    async def wait(self, action, path):
        with trio.move_on_after(TIMEOUT):
            while not self.seen(action, path):
                await trio.sleep(0.01)
        assert self.seen(action, path), f"no {action} for {path}: {self.events}"


async def start(nursery, publisher, size=1000):
    send, receive = trio.open_memory_channel(size)
    collector = Collector(receive)
    await nursery.start(publisher.run, send)
    nursery.start_soon(collector.run)
    return collector


async def test_publisher_file_actions(tmp_path):
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        path = tmp_path / "a.txt"
        path.write_bytes(b"one")
        await events.wait("UPDATED", path)
        os.chmod(path, 0o600)
        await events.wait("ATTRIBUTES_MODIFIED", path)
        os.rename(path, tmp_path / "b.txt")
        await events.wait("MOVED_TO", tmp_path / "b.txt")
        os.unlink(tmp_path / "b.txt")
        await events.wait("DELETED", tmp_path / "b.txt")
        nursery.cancel_scope.cancel()

    assert events.actions(path) == [
        "CREATED",
        "UPDATED",
        "ATTRIBUTES_MODIFIED",
        "MOVED_FROM",
    ]
    assert events.actions(tmp_path / "b.txt") == ["MOVED_TO", "DELETED"]
    moved = [e for e in events.events if e.action.startswith("MOVED")]
    assert moved[0].fields["transaction_id"] != 0
    assert moved[0].fields["transaction_id"] == moved[1].fields["transaction_id"]
    assert {e.fields["category"] for e in events.events} == {"tmp"}
    assert publisher.statistics().events == len(events.events)


async def test_publisher_filters_by_pattern(tmp_path):
    publisher = InotifyPublisher(
        {"conf": [f"{tmp_path}/%.conf"]},
        {"conf": [f"{tmp_path}/secret.conf"]},
    )
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        (tmp_path / "secret.conf").write_bytes(b"x")
        (tmp_path / "a.txt").write_bytes(b"x")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "b.conf").write_bytes(b"x")
        (tmp_path / "c.conf").write_bytes(b"x")
        await events.wait("UPDATED", tmp_path / "c.conf")
        nursery.cancel_scope.cancel()

    paths = {e.fields["target_path"] for e in events.events}
    assert paths == {os.fsencode(tmp_path / "c.conf")}


async def test_publisher_character_class(tmp_path):
    for name in ("ad", "bd", "cd"):
        (tmp_path / name).mkdir()
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/[ab]d/[!x]%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        for name in ("ad", "bd", "cd"):
            (tmp_path / name / "xfile").write_bytes(b"x")
            (tmp_path / name / "file").write_bytes(b"x")
        (tmp_path / "marker").write_bytes(b"x")
        (tmp_path / "bd" / "last").write_bytes(b"x")
        await events.wait("UPDATED", tmp_path / "bd" / "last")
        nursery.cancel_scope.cancel()

    paths = {e.fields["target_path"] for e in events.events}
    assert paths == {
        os.fsencode(tmp_path / "ad" / "file"),
        os.fsencode(tmp_path / "bd" / "file"),
        os.fsencode(tmp_path / "bd" / "last"),
    }


async def test_publisher_coalesces_writes(tmp_path):
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%"]})
    path = tmp_path / "log"
    path.write_bytes(b"")
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        with open(path, "ab") as file:
            for _ in range(20):
                file.write(b"line\n")
                file.flush()
        await events.wait("UPDATED", path)
        (tmp_path / "marker").write_bytes(b"")
        await events.wait("CREATED", tmp_path / "marker")
        nursery.cancel_scope.cancel()

    # All 20 writes sit in the queue before the publisher reads, so one UPDATED
    # covers them, and the close repeats none since no write followed.
    assert events.actions(path) == ["UPDATED"]


async def test_publisher_file_accesses(tmp_path):
    path = tmp_path / "read-me"
    path.write_bytes(b"secret")
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%"]}, file_accesses=["tmp"])
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        assert path.read_bytes() == b"secret"
        await events.wait("ACCESSED", path)
        nursery.cancel_scope.cancel()

    assert events.actions(path) == ["OPENED", "ACCESSED"]


async def test_directory_listing_is_not_access(tmp_path):
    # The publisher lists directories itself at start and after rescans, so a
    # directory read must not show as someone's access.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"x")
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/**"]}, file_accesses=["tmp"])
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.listdir(tmp_path / "sub")
        (tmp_path / "marker").write_bytes(b"")
        await events.wait("CREATED", tmp_path / "marker")
        nursery.cancel_scope.cancel()

    assert events.actions(tmp_path / "sub") == []


async def test_publisher_new_directory_contents(tmp_path):
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/**"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        # No checkpoint between these steps: the publisher sees the directory only
        # after everything in it exists.
        deep = tmp_path / "new" / "deeper"
        deep.mkdir(parents=True)
        (deep / "f").write_bytes(b"x")
        (tmp_path / "new" / "g").write_bytes(b"y")
        await events.wait("CREATED", deep / "f")
        await events.wait("CREATED", tmp_path / "new" / "g")
        # Later files in the new directory are seen through its own watch.
        (deep / "h").write_bytes(b"z")
        await events.wait("UPDATED", deep / "h")
        nursery.cancel_scope.cancel()

    assert events.actions(deep / "f") == ["CREATED"]
    assert events.actions(tmp_path / "new") == ["CREATED"]
    assert events.actions(deep) == ["CREATED"]
    assert events.actions(deep / "h") == ["CREATED", "UPDATED"]


async def test_publisher_missing_start_directory(tmp_path):
    publisher = InotifyPublisher({"later": [f"{tmp_path}/a/b/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        (tmp_path / "a").mkdir()
        await trio.sleep(0)
        (tmp_path / "a" / "b").mkdir()
        (tmp_path / "a" / "b" / "early").write_bytes(b"x")
        await events.wait("CREATED", tmp_path / "a" / "b" / "early")
        (tmp_path / "a" / "b" / "late").write_bytes(b"x")
        await events.wait("UPDATED", tmp_path / "a" / "b" / "late")
        nursery.cancel_scope.cancel()

    paths = {e.fields["target_path"] for e in events.events}
    assert os.fsencode(tmp_path / "a") not in paths
    assert os.fsencode(tmp_path / "a" / "b") not in paths


async def test_publisher_start_directory_recreated(tmp_path):
    watched = tmp_path / "watched"
    watched.mkdir()
    publisher = InotifyPublisher({"tmp": [f"{watched}/%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        (watched / "f").write_bytes(b"x")
        await events.wait("UPDATED", watched / "f")
        os.unlink(watched / "f")
        watched.rmdir()
        await events.wait("DELETED", watched / "f")
        # Whether or not the publisher has watched the parent by now, the new
        # directory's contents are reported.
        watched.mkdir()
        (watched / "g").write_bytes(b"x")
        await events.wait("CREATED", watched / "g")
        nursery.cancel_scope.cancel()


async def test_publisher_renamed_directory(tmp_path):
    (tmp_path / "old").mkdir()
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(tmp_path / "old", tmp_path / "new")
        await events.wait("MOVED_TO", tmp_path / "new")
        (tmp_path / "new" / "f").write_bytes(b"x")
        await events.wait("UPDATED", tmp_path / "new" / "f")
        nursery.cancel_scope.cancel()

    assert events.actions(tmp_path / "old" / "f") == []


async def test_publisher_queue_full(tmp_path):
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%"]})
    send, receive = trio.open_memory_channel(1)
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run, send)
        for index in range(5):
            (tmp_path / f"f{index}").write_bytes(b"x")
        with trio.move_on_after(TIMEOUT):
            while publisher.statistics().drop_reasons.get("queue_full", 0) < 5:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()

    statistics = publisher.statistics()
    assert statistics.events == 1
    assert statistics.buffered == 1
    # Five files make ten events (CREATED, UPDATED), and the channel takes one.
    assert statistics.drop_reasons == {"queue_full": 9}
    assert statistics.dropped == 9
    assert receive.receive_nowait().action == "CREATED"


def loss_warnings(caplog, reason):
    """Return the (count, total) pairs of the WARNING lines logged for `reason`."""
    pairs = []
    for record in caplog.records:
        message = record.getMessage()
        found = re.search(r"\(reason=(\w+) count=(\d+) total=(\d+)\)$", message)
        if record.levelno == logging.WARNING and found and found[1] == reason:
            pairs.append((int(found[2]), int(found[3])))
    return pairs


async def test_publisher_queue_full_logged(tmp_path, caplog, autojump_clock):
    caplog.set_level(logging.WARNING, logger="publishers.inotify")
    start_time = 1_700_000_000
    publisher = InotifyPublisher(
        {"tmp": [f"{tmp_path}/%"]}, clock=lambda: start_time + trio.current_time()
    )
    send, receive = trio.open_memory_channel(1)

    async def wait_dropped(count):
        # The fake clock moves 0.01 s per poll, far from the 60 s interval.
        for _ in range(TIMEOUT * 100):
            if publisher.statistics().drop_reasons.get("queue_full", 0) >= count:
                return
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run, send)
        for index in range(5):
            (tmp_path / f"f{index}").write_bytes(b"x")
        await wait_dropped(9)
        # The first drops are logged at once.
        assert len(loss_warnings(caplog, "queue_full")) == 1

        # A second burst within 60 s is counted but not logged.
        for index in range(5, 10):
            (tmp_path / f"f{index}").write_bytes(b"x")
        await wait_dropped(19)
        assert len(loss_warnings(caplog, "queue_full")) == 1

        # Once 60 s have passed, the rest is logged without any further drop.
        await trio.sleep(75)
        warnings = loss_warnings(caplog, "queue_full")
        assert len(warnings) == 2
        nursery.cancel_scope.cancel()

    assert publisher.statistics().drop_reasons == {"queue_full": 19}
    assert sum(count for count, _ in warnings) == 19
    assert warnings[-1][1] == 19
    assert loss_warnings(caplog, "queue_full") == warnings
    assert "event channel is full" in caplog.records[0].getMessage()
    assert "event channel is full" in publisher.statistics().last_error


async def test_publisher_stop_logs_unlogged_drops(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="publishers.inotify")
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%"]})
    send, receive = trio.open_memory_channel(1)
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run, send)
        for index in range(3):
            (tmp_path / f"a{index}").write_bytes(b"x")
        with trio.move_on_after(TIMEOUT):
            while publisher.statistics().drop_reasons.get("queue_full", 0) < 5:
                await trio.sleep(0.01)
        for index in range(3):
            (tmp_path / f"b{index}").write_bytes(b"x")
        with trio.move_on_after(TIMEOUT):
            while publisher.statistics().drop_reasons.get("queue_full", 0) < 11:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()

    warnings = loss_warnings(caplog, "queue_full")
    assert sum(count for count, _ in warnings) == 11
    assert warnings[-1][1] == 11


@pytest.mark.parametrize(
    ("code", "reason", "message"),
    [
        (
            errno.ENOSPC,
            "watch_limit",
            "inotify watch limit reached at /srv/100%:"
            " raise fs.inotify.max_user_watches",
        ),
        (errno.EACCES, "watch_failed", "inotify cannot watch /srv/100%: Denied"),
    ],
)
def test_publisher_watch_failure_logged(caplog, code, reason, message):
    caplog.set_level(logging.WARNING, logger="publishers.inotify")
    publisher = InotifyPublisher({"tmp": ["/srv/%"]}, clock=lambda: 1000.0)
    for _ in range(3):
        publisher._watch_failed(b"/srv/100%", OSError(code, "Denied"))

    statistics = publisher.statistics()
    assert statistics.drop_reasons == {reason: 3}
    assert statistics.last_error == message
    assert [record.getMessage() for record in caplog.records] == [
        f"{message} (reason={reason} count=1 total=1)"
    ]


def test_publisher_vanished_directory_not_logged(caplog):
    publisher = InotifyPublisher({"tmp": ["/srv/%"]})
    publisher._watch_failed(b"/srv/gone", OSError(errno.ENOENT, "No such file"))
    assert publisher.statistics().dropped == 0
    assert caplog.records == []


@pytest.fixture
def small_inotify_queue():
    """Lower fs.inotify.max_queued_events while a test opens its inotify instance.

    The limit applies to instances created while it is set, so the test calls the
    fixture's function around `nursery.start` and the value is restored at once.
    """
    saved = MAX_QUEUED.read_text()

    async def start_small(nursery, publisher, size):
        MAX_QUEUED.write_text(str(size))
        try:
            return await start(nursery, publisher)
        finally:
            MAX_QUEUED.write_text(saved)

    try:
        yield start_small
    finally:
        MAX_QUEUED.write_text(saved)


@pytest.mark.skipif(not os.access(MAX_QUEUED, os.W_OK), reason="needs root")
async def test_publisher_overflow_rescan(tmp_path, small_inotify_queue, caplog):
    caplog.set_level(logging.WARNING, logger="publishers.inotify")
    rewritten = tmp_path / "rewritten"
    rewritten.write_bytes(b"old")
    doomed = tmp_path / "doomed"
    doomed.write_bytes(b"x")
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%%"]})
    async with trio.open_nursery() as nursery:
        events = await small_inotify_queue(nursery, publisher, 8)
        # No checkpoint here, so the publisher reads only after the queue overflowed.
        for index in range(20):
            (tmp_path / f"f{index}").write_bytes(b"x")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "inner").write_bytes(b"x")
        rewritten.write_bytes(b"new content")
        os.unlink(doomed)
        await events.wait("CREATED", tmp_path / "sub" / "inner")
        await events.wait("DELETED", doomed)
        # The rescan watched the new directory again.
        (tmp_path / "sub" / "after").write_bytes(b"x")
        await events.wait("UPDATED", tmp_path / "sub" / "after")
        nursery.cancel_scope.cancel()

    for index in range(20):
        assert events.seen("CREATED", tmp_path / f"f{index}"), index
    assert events.seen("UPDATED", rewritten)
    statistics = publisher.statistics()
    assert statistics.overflows == 1
    assert statistics.drop_reasons == {"overflow": 1}
    assert "overflowed" in statistics.last_error
    assert loss_warnings(caplog, "overflow") == [(1, 1)]


# A watched directory that is moved away. A file written before the publisher
# watches its new directory is reported by the listing, as CREATED only. Each test
# ends by waiting for a file written after that, so every earlier event is read.


def categories(events, path):
    path = os.fsencode(path)
    return [
        e.fields["category"] for e in events.events if e.fields["target_path"] == path
    ]


@pytest.mark.parametrize("suffix", ["%%", "**", "%"])
async def test_publisher_start_directory_moved_away(tmp_path, suffix):
    watched = tmp_path / "d8" / "w"
    watched.mkdir(parents=True)
    old = tmp_path / "d8" / "w-old"
    publisher = InotifyPublisher({"w": [f"{watched}/{suffix}"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        # No checkpoint between these steps, as in a shell script.
        os.rename(watched, old)
        watched.mkdir()
        (watched / "new-in-w").write_bytes(b"1")
        (old / "in-old").write_bytes(b"1")
        await events.wait("CREATED", watched / "new-in-w")
        (watched / "marker").write_bytes(b"1")
        await events.wait("UPDATED", watched / "marker")
        nursery.cancel_scope.cancel()

    assert events.actions(watched / "in-old") == []
    assert events.actions(old / "in-old") == []
    assert events.actions(watched) == ["MOVED_FROM"]
    assert events.actions(watched / "new-in-w")[0] == "CREATED"
    assert events.actions(watched / "marker") == ["CREATED", "UPDATED"]
    assert publisher.statistics().dropped == 0


async def test_publisher_recreated_start_directory(tmp_path):
    watched = tmp_path / "d8" / "w"
    watched.mkdir(parents=True)
    publisher = InotifyPublisher({"w": [f"{watched}/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(watched, tmp_path / "d8" / "w-old")
        await events.wait("MOVED_FROM", watched)
        # The publisher watches d8 by now, so it gets the new directory's IN_CREATE.
        watched.mkdir()
        (watched / "f").write_bytes(b"1")
        await events.wait("CREATED", watched / "f")
        (watched / "g").write_bytes(b"1")
        await events.wait("UPDATED", watched / "g")
        (watched / "sub").mkdir()
        await events.wait("CREATED", watched / "sub")
        (watched / "sub" / "h").write_bytes(b"1")
        await events.wait("UPDATED", watched / "sub" / "h")
        nursery.cancel_scope.cancel()

    assert events.actions(watched / "g") == ["CREATED", "UPDATED"]
    assert events.actions(watched / "sub" / "h") == ["CREATED", "UPDATED"]
    assert events.actions(watched / "sub") == ["CREATED"]
    assert events.actions(watched) == ["MOVED_FROM"]


async def test_publisher_moved_copy_not_reported(tmp_path):
    watched = tmp_path / "d8" / "w"
    (watched / "sub").mkdir(parents=True)
    old = tmp_path / "d8" / "w-old"
    publisher = InotifyPublisher({"w": [f"{watched}/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(watched, old)
        await events.wait("MOVED_FROM", watched)
        (old / "late").write_bytes(b"1")
        (old / "sub" / "deep").write_bytes(b"1")
        os.rename(old / "sub", old / "sub2")
        watched.mkdir()
        (watched / "marker").write_bytes(b"1")
        await events.wait("CREATED", watched / "marker")
        (watched / "live").write_bytes(b"1")
        await events.wait("UPDATED", watched / "live")
        nursery.cancel_scope.cancel()

    paths = {event.fields["target_path"] for event in events.events}
    assert paths == {
        os.fsencode(watched),
        os.fsencode(watched / "marker"),
        os.fsencode(watched / "live"),
    }


async def test_publisher_moved_start_loses_category(tmp_path):
    # d8 is watched for the "d8" category, so the move arrives as a MOVED_FROM and
    # MOVED_TO pair, but the moved copy must not keep the "w" category.
    parent = tmp_path / "d8"
    watched = parent / "w"
    watched.mkdir(parents=True)
    publisher = InotifyPublisher({"w": [f"{watched}/%%"], "d8": [f"{parent}/%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(watched, parent / "w-old")
        await events.wait("MOVED_TO", parent / "w-old")
        (parent / "w-old" / "in-old").write_bytes(b"1")
        watched.mkdir()
        await events.wait("CREATED", watched)
        (watched / "new-in-w").write_bytes(b"1")
        await events.wait("UPDATED", watched / "new-in-w")
        nursery.cancel_scope.cancel()

    assert events.actions(parent / "w-old" / "in-old") == []
    assert events.actions(watched / "in-old") == []
    assert events.actions(watched) == ["MOVED_FROM", "MOVED_FROM", "CREATED"]
    assert categories(events, watched) == ["d8", "w", "d8"]
    cookies = {e.fields["transaction_id"] for e in events.events if "MOVED" in e.action}
    assert len(cookies) == 1
    assert categories(events, watched / "new-in-w") == ["w", "w"]


async def test_publisher_subdirectory_renamed_in_tree(tmp_path):
    (tmp_path / "a" / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    old = os.fsencode(tmp_path / "a" / "sub")
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(tmp_path / "a" / "sub", tmp_path / "b" / "moved")
        # Written before the publisher reads the move, through the same watch.
        (tmp_path / "b" / "moved" / "f").write_bytes(b"1")
        await events.wait("UPDATED", tmp_path / "b" / "moved" / "f")
        (tmp_path / "b" / "moved" / "deeper" / "g").write_bytes(b"1")
        await events.wait("UPDATED", tmp_path / "b" / "moved" / "deeper" / "g")
        nursery.cancel_scope.cancel()

    assert events.actions(tmp_path / "a" / "sub") == ["MOVED_FROM"]
    assert events.actions(tmp_path / "b" / "moved") == ["MOVED_TO"]
    assert events.actions(tmp_path / "b" / "moved" / "f") == ["CREATED", "UPDATED"]
    paths = [e.fields["target_path"] for e in events.events]
    assert [path for path in paths if path.startswith(old + b"/")] == []


async def test_publisher_directory_moved_between_patterns(tmp_path):
    source = tmp_path / "a" / "w"
    source.mkdir(parents=True)
    (tmp_path / "b").mkdir()
    target = tmp_path / "b" / "w"
    publisher = InotifyPublisher({"a": [f"{source}/%%"], "b": [f"{tmp_path}/b/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(source, target)
        await events.wait("MOVED_TO", target)
        (target / "f").write_bytes(b"1")
        await events.wait("UPDATED", target / "f")
        source.mkdir()
        (source / "g").write_bytes(b"1")
        await events.wait("CREATED", source / "g")
        (source / "h").write_bytes(b"1")
        await events.wait("UPDATED", source / "h")
        nursery.cancel_scope.cancel()

    assert events.actions(source / "f") == []
    assert categories(events, target / "f") == ["b", "b"]
    assert categories(events, source) == ["a"]
    assert categories(events, source / "h") == ["a", "a"]


@pytest.mark.parametrize("pattern", ["d8/w/%%", "d8/%%"])
async def test_publisher_directory_moved_out_and_back(tmp_path, pattern):
    watched = tmp_path / "d8" / "w"
    watched.mkdir(parents=True)
    outside = tmp_path / "outside"
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/{pattern}"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(watched, outside)
        await events.wait("MOVED_FROM", watched)
        (outside / "away").write_bytes(b"1")
        os.rename(outside, watched)
        await events.wait("CREATED", watched / "away")
        (watched / "back").write_bytes(b"1")
        await events.wait("UPDATED", watched / "back")
        nursery.cancel_scope.cancel()

    assert events.actions(outside / "away") == []
    assert events.actions(watched / "away") == ["CREATED"]
    assert events.actions(watched / "back") == ["CREATED", "UPDATED"]


async def test_publisher_directory_renamed_twice(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        # The second rename happens before the publisher reads the first.
        os.rename(tmp_path / "a", tmp_path / "b")
        os.rename(tmp_path / "b", tmp_path / "c")
        (tmp_path / "c" / "sub" / "f").write_bytes(b"1")
        await events.wait("UPDATED", tmp_path / "c" / "sub" / "f")
        nursery.cancel_scope.cancel()

    assert events.actions(tmp_path / "c") == ["MOVED_TO"]
    assert events.actions(tmp_path / "c" / "sub" / "f") == ["CREATED", "UPDATED"]


async def test_publisher_moved_after_delete(tmp_path):
    watched = tmp_path / "d8" / "w"
    watched.mkdir(parents=True)
    old = tmp_path / "d8" / "w-old"
    publisher = InotifyPublisher({"w": [f"{watched}/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        # The delete makes the publisher watch d8 for the "w" category.
        watched.rmdir()
        watched.mkdir()
        (watched / "first").write_bytes(b"1")
        await events.wait("CREATED", watched / "first")
        os.rename(watched, old)
        watched.mkdir()
        (watched / "new-in-w").write_bytes(b"1")
        (old / "in-old").write_bytes(b"1")
        await events.wait("CREATED", watched / "new-in-w")
        (watched / "marker").write_bytes(b"1")
        await events.wait("UPDATED", watched / "marker")
        nursery.cancel_scope.cancel()

    assert events.actions(watched / "in-old") == []
    assert events.actions(old / "in-old") == []
    assert events.actions(old) == []
    assert events.actions(watched) == ["MOVED_FROM"]


async def test_publisher_nested_start_moved_with_parent(tmp_path):
    (tmp_path / "w" / "inner").mkdir(parents=True)
    publisher = InotifyPublisher(
        {"outer": [f"{tmp_path}/w/%"], "inner": [f"{tmp_path}/w/inner/%"]}
    )
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(tmp_path / "w", tmp_path / "away")
        await events.wait("MOVED_FROM", tmp_path / "w" / "inner")
        (tmp_path / "away" / "inner" / "f").write_bytes(b"1")
        (tmp_path / "w" / "inner").mkdir(parents=True)
        await events.wait("CREATED", tmp_path / "w" / "inner")
        (tmp_path / "w" / "inner" / "g").write_bytes(b"1")
        await events.wait("UPDATED", tmp_path / "w" / "inner" / "g")
        nursery.cancel_scope.cancel()

    assert categories(events, tmp_path / "w") == ["outer"]
    assert categories(events, tmp_path / "w" / "inner") == ["inner", "outer"]
    assert events.actions(tmp_path / "w" / "inner" / "f") == []
    assert events.actions(tmp_path / "away" / "inner" / "f") == []
    assert categories(events, tmp_path / "w" / "inner" / "g") == ["inner", "inner"]


async def test_publisher_wildcard_level_moves(tmp_path):
    for site in ("a", "b"):
        (tmp_path / "sites" / site / "htdocs").mkdir(parents=True)
    publisher = InotifyPublisher({"www": [f"{tmp_path}/sites/%/htdocs/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(tmp_path / "sites" / "a", tmp_path / "sites" / "c")
        os.rename(tmp_path / "sites" / "b", tmp_path / "elsewhere")
        (tmp_path / "elsewhere" / "htdocs" / "hidden").write_bytes(b"1")
        (tmp_path / "sites" / "c" / "htdocs" / "f").write_bytes(b"1")
        await events.wait("UPDATED", tmp_path / "sites" / "c" / "htdocs" / "f")
        (tmp_path / "sites" / "c" / "htdocs" / "g").write_bytes(b"1")
        await events.wait("UPDATED", tmp_path / "sites" / "c" / "htdocs" / "g")
        nursery.cancel_scope.cancel()

    paths = {e.fields["target_path"] for e in events.events}
    assert paths == {
        os.fsencode(tmp_path / "sites" / "c" / "htdocs" / "f"),
        os.fsencode(tmp_path / "sites" / "c" / "htdocs" / "g"),
    }


def paths_under(events, top):
    top = os.fsencode(top) + b"/"
    paths = [event.fields["target_path"] for event in events.events]
    return [path for path in paths if path.startswith(top)]


@pytest.mark.parametrize("read_between", [False, True])
async def test_publisher_directory_moved_out_of_exclude(tmp_path, read_between):
    rec = tmp_path / "rec"
    (rec / "skip").mkdir(parents=True)
    publisher = InotifyPublisher({"rec": [f"{rec}/**"]}, {"rec": [f"{rec}/skip/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        (rec / "skip" / "sd2").mkdir()
        (rec / "skip" / "sd2" / "y").write_bytes(b"1")
        if read_between:
            # The publisher watches sd2 and reads y's events before the move.
            (rec / "first").write_bytes(b"1")
            await events.wait("UPDATED", rec / "first")
        os.rename(rec / "skip" / "sd2", rec / "sd2_out")
        await events.wait("CREATED", rec / "sd2_out" / "y")
        (rec / "sd2_out" / "later").write_bytes(b"1")
        await events.wait("UPDATED", rec / "sd2_out" / "later")
        nursery.cancel_scope.cancel()

    assert events.actions(rec / "sd2_out") == ["MOVED_TO"]
    assert events.actions(rec / "sd2_out" / "y") == ["CREATED"]
    assert paths_under(events, rec / "skip") == []


async def test_publisher_directory_moved_into_exclude(tmp_path):
    rec = tmp_path / "rec"
    (rec / "skip").mkdir(parents=True)
    (rec / "sd").mkdir()
    (rec / "sd" / "y").write_bytes(b"1")
    publisher = InotifyPublisher({"rec": [f"{rec}/**"]}, {"rec": [f"{rec}/skip/%%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(rec / "sd", rec / "skip" / "sd")
        (rec / "skip" / "sd" / "hidden").write_bytes(b"1")
        (rec / "marker").write_bytes(b"1")
        await events.wait("UPDATED", rec / "marker")
        nursery.cancel_scope.cancel()

    # The MOVED_FROM row of the directory covers the file in it.
    assert events.actions(rec / "sd") == ["MOVED_FROM"]
    assert events.actions(rec / "sd" / "y") == []
    assert paths_under(events, rec / "skip") == []


async def test_publisher_wildcard_directory_leaves(tmp_path):
    pat = tmp_path / "pat"
    for name in ("alpha", "beta", "bravo"):
        (pat / name).mkdir(parents=True)
    (pat / "alpha" / "f").write_bytes(b"1")
    (pat / "beta" / "bf").write_bytes(b"1")
    outside = tmp_path / "outside"
    outside.mkdir()
    publisher = InotifyPublisher({"pat": [f"{pat}/[ab]*/%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(pat / "alpha", outside / "alpha_gone")
        os.rename(pat / "beta", pat / "zzz")
        (outside / "alpha_gone" / "g").write_bytes(b"1")
        (pat / "zzz" / "g").write_bytes(b"1")
        (pat / "bravo" / "marker").write_bytes(b"1")
        await events.wait("UPDATED", pat / "bravo" / "marker")
        nursery.cancel_scope.cancel()

    assert events.actions(pat / "alpha" / "f") == ["MOVED_FROM"]
    assert events.actions(pat / "beta" / "bf") == ["MOVED_FROM"]
    moved = [e for e in events.events if e.action == "MOVED_FROM"]
    assert all(e.fields["transaction_id"] != 0 for e in moved)
    assert moved[0].fields["inode"] == os.stat(outside / "alpha_gone" / "f").st_ino
    assert paths_under(events, outside) == []
    assert paths_under(events, pat / "zzz") == []
    assert publisher.statistics().dropped == 0


async def test_publisher_wildcard_directory_renamed(tmp_path):
    pat = tmp_path / "pat"
    (pat / "alpha").mkdir(parents=True)
    (pat / "alpha" / "f").write_bytes(b"1")
    publisher = InotifyPublisher({"pat": [f"{pat}/[ab]*/%"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        os.rename(pat / "alpha", pat / "bravo")
        (pat / "bravo" / "marker").write_bytes(b"1")
        await events.wait("UPDATED", pat / "bravo" / "marker")
        nursery.cancel_scope.cancel()

    assert events.actions(pat / "alpha") == []
    assert events.actions(pat / "bravo") == []
    assert events.actions(pat / "alpha" / "f") == ["MOVED_FROM"]
    assert events.actions(pat / "bravo" / "f") == ["MOVED_TO"]
    cookies = {e.fields["transaction_id"] for e in events.events if "MOVED" in e.action}
    assert len(cookies) == 1
    assert cookies != {0}


def assert_parents_first(events, root):
    """Check that each event's path comes after the first event of its directory,
    when that directory below `root` has events."""
    root = os.fsencode(root)
    first = {}
    for index, event in enumerate(events.events):
        first.setdefault(event.fields["target_path"], index)
    for index, event in enumerate(events.events):
        parent = os.path.dirname(event.fields["target_path"])
        if parent != root and parent in first:
            assert first[parent] < index, (event, events.events)


async def test_publisher_new_tree_parents_first(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    outside = tmp_path / "outside"
    (outside / "x" / "y" / "z").mkdir(parents=True)
    (outside / "x" / "y" / "z" / "f").write_bytes(b"1")
    publisher = InotifyPublisher({"rec": [f"{rec}/**"]})
    async with trio.open_nursery() as nursery:
        events = await start(nursery, publisher)
        deep = rec / "a" / "b" / "c" / "d"
        deep.mkdir(parents=True)
        (deep / "f").write_bytes(b"1")
        os.rename(outside / "x", rec / "x")
        await events.wait("CREATED", rec / "x" / "y" / "z" / "f")
        await events.wait("CREATED", deep / "f")
        nursery.cancel_scope.cancel()

    assert events.actions(rec / "a") == ["CREATED"]
    assert events.actions(rec / "a" / "b") == ["CREATED"]
    assert events.actions(rec / "x") == ["MOVED_TO"]
    assert events.actions(rec / "x" / "y") == ["CREATED"]
    assert_parents_first(events, rec)


@pytest.mark.skipif(not os.access(MAX_QUEUED, os.W_OK), reason="needs root")
async def test_publisher_overflow_mid_read(tmp_path, small_inotify_queue):
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%"]})
    async with trio.open_nursery() as nursery:
        events = await small_inotify_queue(nursery, publisher, 8)
        fd = publisher._inotify.fileno()
        # No checkpoint until the wait, so the publisher reads only after this.
        for index in range(8):
            os.mkdir(tmp_path / f"d{index}")
        # The queue is full: IN_CREATE of `late` is lost and IN_Q_OVERFLOW queued.
        late = os.open(tmp_path / "late", os.O_WRONLY | os.O_CREAT)
        # Three events of 32 bytes ("dN" padded to 16) leave room for the write's
        # IN_MODIFY and IN_CLOSE_WRITE, which come after IN_Q_OVERFLOW in one read.
        assert len(os.read(fd, 3 * 32)) == 3 * 32
        os.write(late, b"x")
        os.close(late)
        await events.wait("UPDATED", tmp_path / "late")
        (tmp_path / "marker").write_bytes(b"1")
        await events.wait("UPDATED", tmp_path / "marker")
        nursery.cancel_scope.cancel()

    assert events.actions(tmp_path / "late") == ["CREATED", "UPDATED"]
    for index in range(8):
        assert events.actions(tmp_path / f"d{index}") == ["CREATED"], index
    assert publisher.statistics().drop_reasons == {"overflow": 1}


@pytest.mark.skipif(not os.access(MAX_QUEUED, os.W_OK), reason="needs root")
async def test_publisher_overflow_finds_metadata_changes(tmp_path, small_inotify_queue):
    watched = tmp_path / "w"
    watched.mkdir()
    rewritten = watched / "rewritten"
    rewritten.write_bytes(b"aaaa")
    before = os.stat(rewritten)
    chowned = watched / "chowned"
    chowned.write_bytes(b"1")
    tagged = watched / "tagged"
    tagged.write_bytes(b"1")
    chmodded = watched / "dir"
    chmodded.mkdir()
    untouched = watched / "untouched"
    untouched.write_bytes(b"1")
    try:
        os.setxattr(untouched, "user.sns", b"1")
    except OSError as error:
        pytest.skip(f"no user extended attributes on {tmp_path}: {error.strerror}")
    publisher = InotifyPublisher({"w": [f"{watched}/%"]})
    async with trio.open_nursery() as nursery:
        events = await small_inotify_queue(nursery, publisher, 8)
        # No checkpoint: the directories fill the queue, so the kernel drops every
        # event of the changes below.
        for index in range(9):
            os.mkdir(watched / f"fill{index}")
        rewritten.write_bytes(b"bbbb")
        os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.chown(chowned, 4321, 4321)
        os.setxattr(tagged, "user.sns", b"1")
        os.chmod(chmodded, 0o700)
        await events.wait("UPDATED", rewritten)
        (watched / "marker").write_bytes(b"1")
        await events.wait("UPDATED", watched / "marker")
        nursery.cancel_scope.cancel()

    assert os.stat(rewritten).st_mtime_ns == before.st_mtime_ns
    assert events.actions(rewritten) == ["UPDATED"]
    assert events.actions(chowned) == ["UPDATED", "ATTRIBUTES_MODIFIED"]
    assert events.actions(tagged) == ["UPDATED"]
    assert events.actions(chmodded) == ["ATTRIBUTES_MODIFIED"]
    assert events.actions(untouched) == []
    assert publisher.statistics().drop_reasons == {"overflow": 1}


def rescans(caplog):
    return [r for r in caplog.records if r.getMessage().startswith("inotify rescan:")]


async def test_publisher_queue_full_rescan(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="publishers.inotify_snapshot")
    doomed = tmp_path / "doomed"
    doomed.write_bytes(b"1")
    rewritten = tmp_path / "rewritten"
    rewritten.write_bytes(b"old")
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%"]})
    send, receive = trio.open_memory_channel(2)
    events = Collector(receive)
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run, send)
        for index in range(5):
            (tmp_path / f"f{index}").write_bytes(b"x")
        os.unlink(doomed)
        rewritten.write_bytes(b"new content")
        with trio.move_on_after(TIMEOUT):
            while publisher.statistics().drop_reasons.get("queue_full", 0) < 10:
                await trio.sleep(0.01)
        assert not rescans(caplog)
        # The channel has room once the events are received, and the rescan
        # reports what the dropped events described.
        nursery.start_soon(events.run)
        for index in range(5):
            await events.wait("CREATED", tmp_path / f"f{index}")
        await events.wait("DELETED", doomed)
        await events.wait("UPDATED", rewritten)
        (tmp_path / "marker").write_bytes(b"1")
        await events.wait("UPDATED", tmp_path / "marker")
        nursery.cancel_scope.cancel()

    statistics = publisher.statistics()
    assert statistics.drop_reasons["queue_full"] >= 10
    assert set(statistics.drop_reasons) == {"queue_full"}
    assert rescans(caplog)


async def test_publisher_rescan_waits_for_room(tmp_path, caplog, autojump_clock):
    caplog.set_level(logging.INFO, logger="publishers.inotify_snapshot")
    publisher = InotifyPublisher({"tmp": [f"{tmp_path}/%"]})
    send, receive = trio.open_memory_channel(1)
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run, send)
        for index in range(3):
            (tmp_path / f"f{index}").write_bytes(b"x")
        # The fake clock moves 0.01 s per poll.
        for _ in range(TIMEOUT * 100):
            if publisher.statistics().drop_reasons.get("queue_full", 0) >= 5:
                break
            await trio.sleep(0.01)
        # Nothing receives, so the channel stays full and no rescan runs.
        await trio.sleep(60)
        assert not rescans(caplog)
        assert publisher.statistics().drop_reasons == {"queue_full": 5}
        assert publisher.statistics().buffered == 1
        nursery.cancel_scope.cancel()
