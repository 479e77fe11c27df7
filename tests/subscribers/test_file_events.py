import hashlib
import logging
import os
import re
import subprocess
import sys

import pytest
import trio

from publishers.inotify import InotifyPublisher
from sensor.engine import Engine
from sensor.events import Event
from sensor.store import Store
from subscribers import file_events
from subscribers.file_events import (
    SCHEMA,
    FileEventsSubscriber,
    describe_file,
    hash_file,
)

# How long a test waits for events before it fails. Events usually arrive within
# milliseconds, so this only bounds a broken run.
TIMEOUT = 10

COLUMNS = (
    "target_path, category, action, transaction_id, inode, uid, gid, mode, size,"
    " atime, mtime, ctime, md5, sha1, sha256, hashed, time"
)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "sensor.db")
    yield store
    store.close()


def rows(store, where="1"):
    sql = f"SELECT {COLUMNS} FROM file_events WHERE {where}"
    return Engine(store).execute(sql).dicts()


async def wait_rows(store, where, count=1):
    with trio.move_on_after(TIMEOUT):
        while len(rows(store, where)) < count:
            await trio.sleep(0.01)
    found = rows(store, where)
    assert len(found) >= count, f"no rows where {where}: {rows(store)}"
    return found


def where_path(path, action):
    return f"target_path = '{os.fsdecode(path)}' AND action = '{action}'"


def digests(content):
    return {
        "md5": hashlib.md5(content).hexdigest(),
        "sha1": hashlib.sha1(content).hexdigest(),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


async def start_pipeline(nursery, store, file_paths, **subscriber_options):
    options = {"events_expiry": 3600, "events_max": 100_000, **subscriber_options}
    publisher = InotifyPublisher(file_paths)
    subscriber = FileEventsSubscriber(store, **options)
    send, receive = trio.open_memory_channel(1000)
    await nursery.start(subscriber.run, receive)
    await nursery.start(publisher.run, send)
    return publisher, subscriber


def test_schema_matches_osquery():
    assert SCHEMA.column_names == (
        "target_path",
        "category",
        "action",
        "transaction_id",
        "inode",
        "uid",
        "gid",
        "mode",
        "size",
        "atime",
        "mtime",
        "ctime",
        "md5",
        "sha1",
        "sha256",
        "hashed",
        "time",
        "eid",
    )
    assert SCHEMA.event_table
    assert SCHEMA.column("eid").hidden
    assert SCHEMA.column("time").type == "BIGINT"


def test_import_skips_trio():
    code = "import sys, subscribers.file_events; print('trio' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"


async def test_moved_in_file_is_hashed(tmp_path, store):
    watched = tmp_path / "watched"
    outside = tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    content = b"moved in from elsewhere\n"
    (outside / "payload").write_bytes(content)
    async with trio.open_nursery() as nursery:
        await start_pipeline(nursery, store, {"docs": [f"{watched}/%%"]})
        os.rename(outside / "payload", watched / "a.txt")
        await wait_rows(store, where_path(watched / "a.txt", "MOVED_TO"))
        nursery.cancel_scope.cancel()

    (moved,) = [row for row in rows(store) if row["action"] == "MOVED_TO"]
    assert moved["hashed"] == 1
    assert moved["sha256"] == digests(content)["sha256"]


async def test_file_lifecycle_rows(tmp_path, store):
    watched = tmp_path / "watched"
    watched.mkdir()
    path = watched / "a.txt"
    content = b"hello, file_events\n"
    async with trio.open_nursery() as nursery:
        await start_pipeline(nursery, store, {"docs": [f"{watched}/%%"]})
        path.write_bytes(content)
        await wait_rows(store, where_path(path, "UPDATED"))
        os.chmod(path, 0o640)
        await wait_rows(store, where_path(path, "ATTRIBUTES_MODIFIED"))
        os.rename(path, watched / "b.txt")
        await wait_rows(store, where_path(watched / "b.txt", "MOVED_TO"))
        os.unlink(watched / "b.txt")
        await wait_rows(store, where_path(watched / "b.txt", "DELETED"))
        nursery.cancel_scope.cancel()

    found = rows(store)
    assert [(row["target_path"], row["action"]) for row in found] == [
        (str(path), "CREATED"),
        (str(path), "UPDATED"),
        (str(path), "ATTRIBUTES_MODIFIED"),
        (str(path), "MOVED_FROM"),
        (str(watched / "b.txt"), "MOVED_TO"),
        (str(watched / "b.txt"), "DELETED"),
    ]
    assert {row["category"] for row in found} == {"docs"}

    updated = found[1]
    for name, digest in digests(content).items():
        assert updated[name] == digest
    assert updated["hashed"] == 1
    assert updated["size"] == len(content)
    assert updated["inode"] == found[4]["inode"]
    assert updated["uid"] == os.getuid()
    assert updated["gid"] == os.getgid()
    assert updated["mtime"] > 0
    assert updated["time"] > 0

    assert found[2]["mode"] == "0640"
    assert found[2]["hashed"] == 0
    assert found[2]["md5"] is None
    assert found[3]["transaction_id"] != 0
    assert found[3]["transaction_id"] == found[4]["transaction_id"]
    # The file is gone at DELETED, so the publisher's snapshot fills these.
    assert found[5]["inode"] == found[4]["inode"]
    assert found[5]["size"] == len(content)
    assert found[5]["mode"] == "0640"
    assert found[5]["hashed"] == 0


async def test_new_directory_files_hashed(tmp_path, store):
    async with trio.open_nursery() as nursery:
        await start_pipeline(nursery, store, {"tree": [f"{tmp_path}/watched/**"]})
        # The directory does not exist at start, and its files are written before
        # the publisher can watch it.
        (tmp_path / "watched" / "new").mkdir(parents=True)
        for index in range(3):
            (tmp_path / "watched" / "new" / f"f{index}").write_bytes(b"%d" % index)
        for index in range(3):
            path = tmp_path / "watched" / "new" / f"f{index}"
            await wait_rows(store, where_path(path, "CREATED"))
        nursery.cancel_scope.cancel()

    for index in range(3):
        path = tmp_path / "watched" / "new" / f"f{index}"
        created = rows(store, where_path(path, "CREATED"))
        assert len(created) == 1
        assert created[0]["sha256"] == digests(b"%d" % index)["sha256"]
        assert created[0]["category"] == "tree"


async def test_non_utf8_name_stored(tmp_path, store):
    name = os.fsencode(tmp_path) + b"/caf\xe9"
    async with trio.open_nursery() as nursery:
        await start_pipeline(nursery, store, {"tmp": [f"{tmp_path}/%"]})
        with open(name, "wb") as file:
            file.write(b"x")
        await wait_rows(store, "action = 'UPDATED'")
        nursery.cancel_scope.cancel()

    found = rows(store, "action = 'UPDATED'")
    assert found[0]["target_path"] == f"{tmp_path}/caf\\xe9"
    assert found[0]["md5"] == digests(b"x")["md5"]


async def test_events_survive_restart(tmp_path):
    store = Store(tmp_path / "sensor.db")
    subscriber = FileEventsSubscriber(store, events_expiry=3600, events_max=100)
    send, receive = trio.open_memory_channel(10)
    fields = {"target_path": b"/nonexistent/x", "category": "c"}
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run, receive)
        async with send:
            await send.send(Event("inotify", "DELETED", 1_700_000_000, fields))
    store.close()

    reopened = Store(tmp_path / "sensor.db")
    try:
        found = rows(reopened)
    finally:
        reopened.close()
    assert len(found) == 1
    assert found[0]["target_path"] == "/nonexistent/x"
    assert found[0]["action"] == "DELETED"
    assert found[0]["time"] == 1_700_000_000
    assert found[0]["hashed"] == 0
    assert subscriber.statistics().events == 1


def stored_event(store, time):
    store.add_events(
        "file_events", [(time, {"target_path": "/x", "action": "UPDATED"})]
    )


def test_expire_by_age_and_count(store):
    subscriber = FileEventsSubscriber(store, events_expiry=100, events_max=3)
    for time in (800, 850, 950, 960, 970, 980, 990):
        stored_event(store, time)
    subscriber.expire(1000)
    statistics = subscriber.statistics()
    assert statistics.expired == 2
    assert statistics.drop_reasons == {"events_max": 2}
    assert statistics.buffered == 3
    assert [row["time"] for row in rows(store)] == [970, 980, 990]


async def run_with_fake_time(store, expiry, events_max, until):
    """Run a subscriber on trio's fake clock, send it three events, and wait (in fake
    time) until `until(statistics)` holds."""
    start = 1_700_000_000

    def clock():
        return start + trio.current_time()

    subscriber = FileEventsSubscriber(
        store, events_expiry=expiry, events_max=events_max, clock=clock
    )
    send, receive = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run, receive)
        for index in range(3):
            fields = {"target_path": f"/gone/{index}", "category": "c"}
            await send.send(Event("inotify", "DELETED", int(clock()), fields))
        with trio.move_on_after(10 * 60):
            while not until(subscriber.statistics()):
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return subscriber.statistics()


async def test_run_expires_by_age(store, autojump_clock):
    statistics = await run_with_fake_time(
        store, expiry=30, events_max=100, until=lambda s: s.expired == 3
    )
    assert statistics.expired == 3
    assert statistics.dropped == 0
    assert statistics.buffered == 0
    assert store.count_events("file_events") == 0


async def test_run_expires_by_count(store, autojump_clock):
    statistics = await run_with_fake_time(
        store, expiry=10**9, events_max=2, until=lambda s: s.dropped == 1
    )
    assert statistics.drop_reasons == {"events_max": 1}
    assert statistics.expired == 0
    assert statistics.buffered == 2
    assert [row["target_path"] for row in rows(store)] == ["/gone/1", "/gone/2"]


def loss_warnings(caplog, reason):
    """Return the (count, total) pairs of the WARNING lines logged for `reason`."""
    pairs = []
    for record in caplog.records:
        message = record.getMessage()
        found = re.search(r"\(reason=(\w+) count=(\d+) total=(\d+)\)$", message)
        if record.levelno == logging.WARNING and found and found[1] == reason:
            pairs.append((int(found[2]), int(found[3])))
    return pairs


async def send_burst(subscriber, count):
    """Run a subscriber, send it `count` events as fast as it takes them, and stop it
    once all are handled."""
    send, receive = trio.open_memory_channel(count)
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run, receive)
        for index in range(count):
            fields = {"target_path": f"/gone/{index}", "category": "c"}
            send.send_nowait(Event("inotify", "DELETED", 1_700_000_000, fields))
        with trio.move_on_after(TIMEOUT):
            while handled(subscriber.statistics()) < count:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def handled(statistics):
    """Return the number of events stored or lost while storing."""
    return statistics.events + statistics.drop_reasons.get("store_failed", 0)


async def test_burst_trimmed_to_events_max(store, caplog, autojump_clock):
    caplog.set_level(logging.WARNING, logger="subscribers.file_events")
    subscriber = FileEventsSubscriber(
        store,
        events_expiry=10**9,
        events_max=5,
        clock=lambda: 1_700_000_000 + trio.current_time(),
    )
    await send_burst(subscriber, 20)

    # The periodic expiry, once a minute, has not run yet.
    assert trio.current_time() < 60
    assert store.count_events("file_events") == 5
    statistics = subscriber.statistics()
    assert statistics.events == 20
    assert statistics.buffered == 5
    assert statistics.drop_reasons == {"events_max": 15}
    assert statistics.expired == 0
    assert "events_max=5" in statistics.last_error
    assert [row["target_path"] for row in rows(store)] == [
        f"/gone/{index}" for index in range(15, 20)
    ]

    warnings = loss_warnings(caplog, "events_max")
    assert 1 <= len(warnings) <= 2
    assert sum(count for count, _ in warnings) == 15
    assert warnings[-1][1] == 15


class CountingStore(Store):
    """A store that counts calls of the methods that delete events."""

    deletes = 0

    def expire(self, *args):
        self.deletes += 1
        return super().expire(*args)

    def drop_oldest(self, *args):
        self.deletes += 1
        return super().drop_oldest(*args)


async def test_store_below_events_max_skips_trim(tmp_path, autojump_clock):
    store = CountingStore(tmp_path / "sensor.db")
    subscriber = FileEventsSubscriber(
        store,
        events_expiry=10**9,
        events_max=20,
        clock=lambda: 1_700_000_000 + trio.current_time(),
    )
    try:
        await send_burst(subscriber, 20)
        assert trio.current_time() < 60
        assert store.deletes == 0
        assert store.count_events("file_events") == 20
    finally:
        store.close()


async def test_inotify_burst_trimmed(tmp_path, store):
    watched = tmp_path / "watched"
    watched.mkdir()
    async with trio.open_nursery() as nursery:
        _, subscriber = await start_pipeline(
            nursery, store, {"tmp": [f"{watched}/%"]}, events_max=5
        )
        for index in range(10):
            (watched / f"f{index}").write_bytes(b"x")
        with trio.move_on_after(TIMEOUT):
            while subscriber.statistics().events < 20:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()

    # Ten files make twenty events (CREATED, UPDATED), and the last five are kept.
    statistics = subscriber.statistics()
    assert statistics.events == 20
    assert statistics.drop_reasons == {"events_max": 15}
    assert store.count_events("file_events") == 5
    assert rows(store)[-1]["target_path"] == str(watched / "f9")


async def test_store_failure_logged(store, caplog):
    caplog.set_level(logging.WARNING, logger="subscribers.file_events")
    store.connection.execute(
        "CREATE TRIGGER sns_reject BEFORE INSERT ON events"
        " BEGIN SELECT RAISE(FAIL, 'sns rejected insert'); END"
    )
    subscriber = FileEventsSubscriber(store, events_expiry=3600, events_max=100)
    await send_burst(subscriber, 3)

    statistics = subscriber.statistics()
    assert statistics.events == 0
    assert statistics.drop_reasons == {"store_failed": 3}
    assert "sns rejected insert" in statistics.last_error
    warnings = loss_warnings(caplog, "store_failed")
    assert sum(count for count, _ in warnings) == 3
    assert warnings[-1][1] == 3
    assert "storing file_events failed: " in caplog.records[0].getMessage()


def test_expire_by_count_logged(store, caplog):
    caplog.set_level(logging.WARNING, logger="subscribers.file_events")
    subscriber = FileEventsSubscriber(
        store, events_expiry=10**9, events_max=1, clock=lambda: 1000.0
    )
    for time in (900, 910, 920):
        stored_event(store, time)
    subscriber.expire(1000)
    stored_event(store, 930)
    subscriber.expire(1000)

    assert subscriber.statistics().drop_reasons == {"events_max": 3}
    assert [record.getMessage() for record in caplog.records] == [
        "file_events dropped its oldest events to stay within events_max=1"
        " (reason=events_max count=2 total=2)"
    ]


def test_describe_file_hashes_regular_files(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    described = describe_file(os.fsencode(path), hashing=True)
    assert described["hashed"] == 1
    assert described["sha1"] == digests(b"abc")["sha1"]
    assert described["mode"] == f"{os.stat(path).st_mode & 0o7777:04o}"


def test_hashed_size_matches_content(tmp_path):
    # Size and times come from the open file after hashing, so they describe the
    # content that was hashed even when a writer grew the file after the lstat.
    path = tmp_path / "f"
    path.write_bytes(b"")
    before = describe_file(os.fsencode(path), hashing=False)
    path.write_bytes(b"grown content")
    hashed = hash_file(os.fsencode(path))
    assert before["size"] == 0
    assert hashed["size"] == len(b"grown content")
    assert hashed["md5"] == digests(b"grown content")["md5"]


def test_describe_file_skips_directories(tmp_path):
    described = describe_file(os.fsencode(tmp_path), hashing=True)
    assert described["hashed"] == 0
    assert "md5" not in described


def test_describe_file_skips_fifo(tmp_path):
    # A FIFO is not a regular file, so it is never opened for hashing.
    os.mkfifo(tmp_path / "fifo")
    described = describe_file(os.fsencode(tmp_path / "fifo"), hashing=True)
    assert described["hashed"] == 0


def test_describe_file_missing(tmp_path):
    assert describe_file(os.fsencode(tmp_path / "missing"), hashing=True) == {
        "hashed": 0
    }


def test_describe_file_read_max(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    at_limit = describe_file(os.fsencode(path), hashing=True, read_max=10)
    over_limit = describe_file(os.fsencode(path), hashing=True, read_max=9)
    assert at_limit["hashed"] == 1
    assert at_limit["md5"] == digests(b"0123456789")["md5"]
    assert over_limit["hashed"] == 0
    assert over_limit["size"] == 10
    assert "md5" not in over_limit


def test_hash_file_grown_past_read_max(tmp_path):
    # The lstat in describe_file saw a small file, but it grew before hashing.
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    hashed = hash_file(os.fsencode(path), read_max=99)
    assert hashed == {"hashed": 0, "size": 100}


def test_subscriber_rejects_negative_read_max(store):
    with pytest.raises(ValueError, match="read_max must be 0 or more bytes, not -1"):
        FileEventsSubscriber(store, events_expiry=60, events_max=10, read_max=-1)


def test_describe_events_hashes_path_once(tmp_path, monkeypatch):
    path = os.fsencode(tmp_path / "big")
    content = os.urandom(3 * 1024 * 1024)
    with open(path, "wb") as file:
        file.write(content)
    calls = []

    def counting_hash_file(path, read_max):
        calls.append(path)
        return hash_file(path, read_max)

    monkeypatch.setattr(file_events, "hash_file", counting_hash_file)
    fields = {"target_path": path, "category": "tmp", "transaction_id": 0}
    events = [
        Event("inotify", "CREATED", 1, fields),
        Event("inotify", "UPDATED", 1, fields),
        Event("inotify", "UPDATED", 2, fields),
    ]
    described = file_events.describe_events(events)
    assert calls == [path]
    assert [row["sha256"] for _, row in described] == [
        hashlib.sha256(content).hexdigest()
    ] * 3


async def test_large_file_row_not_hashed(tmp_path, store):
    watched = tmp_path / "watched"
    watched.mkdir()
    small = watched / "small"
    large = watched / "large"
    async with trio.open_nursery() as nursery:
        await start_pipeline(nursery, store, {"docs": [f"{watched}/%"]}, read_max=16)
        large.write_bytes(b"x" * 17)
        small.write_bytes(b"x" * 16)
        await wait_rows(store, where_path(small, "UPDATED"))
        await wait_rows(store, where_path(large, "UPDATED"))
        nursery.cancel_scope.cancel()

    # A CREATED row may describe the file before the write, so only the UPDATED
    # rows, described after the write was closed, are checked.
    [large_row] = rows(store, where_path(large, "UPDATED"))
    assert large_row["hashed"] == 0
    assert large_row["size"] == 17
    assert large_row["md5"] is None
    [small_row] = rows(store, where_path(small, "UPDATED"))
    assert small_row["hashed"] == 1
    assert small_row["md5"] == digests(b"x" * 16)["md5"]
