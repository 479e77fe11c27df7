import json

import pytest
import trio

from sensor.config import parse_config
from sensor.engine import Engine
from sensor.store import Store
from sensor.scheduler import Scheduler


class ListLogger:
    def __init__(self):
        self.lines = []

    def write(self, lines, *, snapshot=False):
        self.lines.extend(json.loads(line) for line in lines)

    def close(self):
        pass


def make_scheduler(tmp_path, schedule, database="sensor.db"):
    document = {"schedule": schedule}
    config = parse_config(document, str(tmp_path / "config.toml"))
    logger = ListLogger()
    engine = Engine(Store(tmp_path / database))
    return Scheduler(config, engine, [logger], "host1", clock=lambda: 1000), logger


ITEMS_QUERY = {"items": {"query": "SELECT item FROM test_items", "interval": 1}}


@pytest.fixture
def items(fake_tables):
    fake_tables.ITEMS[:] = ["a", "b"]
    yield fake_tables.ITEMS
    fake_tables.ITEMS.clear()


def actions(lines):
    return sorted((line["action"], line["columns"]["item"]) for line in lines)


def test_first_run_adds_every_row(tmp_path, items):
    scheduler, logger = make_scheduler(tmp_path, ITEMS_QUERY)
    scheduler.execute(scheduler.config.schedule["items"])
    assert actions(logger.lines) == [("added", "a"), ("added", "b")]
    assert {line["counter"] for line in logger.lines} == {0}
    assert logger.lines[0]["hostIdentifier"] == "host1"


def test_later_runs_log_only_changes(tmp_path, items):
    scheduler, logger = make_scheduler(tmp_path, ITEMS_QUERY)
    query = scheduler.config.schedule["items"]
    scheduler.execute(query)
    logger.lines.clear()
    items[:] = ["b", "c"]
    scheduler.execute(query)
    assert actions(logger.lines) == [("added", "c"), ("removed", "a")]
    assert {line["counter"] for line in logger.lines} == {1}
    logger.lines.clear()
    scheduler.execute(query)
    assert logger.lines == []


def test_restart_does_not_log_baseline_again(tmp_path, items):
    scheduler, logger = make_scheduler(tmp_path, ITEMS_QUERY)
    scheduler.execute(scheduler.config.schedule["items"])
    restarted, logger = make_scheduler(tmp_path, ITEMS_QUERY)
    restarted.execute(restarted.config.schedule["items"])
    assert logger.lines == []


def test_changed_sql_starts_over(tmp_path, items):
    scheduler, logger = make_scheduler(tmp_path, ITEMS_QUERY)
    scheduler.execute(scheduler.config.schedule["items"])
    changed = {
        "items": {
            "query": "SELECT item FROM test_items WHERE item = 'a'",
            "interval": 1,
        }
    }
    restarted, logger = make_scheduler(tmp_path, changed)
    restarted.execute(restarted.config.schedule["items"])
    assert actions(logger.lines) == [("added", "a")]
    assert logger.lines[0]["counter"] == 0


def test_removed_false_hides_removals(tmp_path, items):
    schedule = {"items": {**ITEMS_QUERY["items"], "removed": False}}
    scheduler, logger = make_scheduler(tmp_path, schedule)
    scheduler.execute(scheduler.config.schedule["items"])
    items[:] = []
    logger.lines.clear()
    scheduler.execute(scheduler.config.schedule["items"])
    assert logger.lines == []


def test_snapshot_logs_all_rows(tmp_path, items):
    schedule = {"items": {**ITEMS_QUERY["items"], "snapshot": True}}
    scheduler, logger = make_scheduler(tmp_path, schedule)
    scheduler.execute(scheduler.config.schedule["items"])
    scheduler.execute(scheduler.config.schedule["items"])
    assert [line["action"] for line in logger.lines] == ["snapshot", "snapshot"]
    assert logger.lines[1]["snapshot"] == [{"item": "a"}, {"item": "b"}]


def test_event_query_sees_each_event_once(tmp_path, fake_tables):
    schedule = {"events": {"query": "SELECT value FROM test_events", "interval": 1}}
    scheduler, logger = make_scheduler(tmp_path, schedule)
    query = scheduler.config.schedule["events"]
    store = Store(tmp_path / "sensor.db")
    store.add_events("test_events", [(1, {"value": "one"}), (2, {"value": "two"})])
    scheduler.execute(query)
    assert [(line["action"], line["columns"]["value"]) for line in logger.lines] == [
        ("added", "one"),
        ("added", "two"),
    ]

    logger.lines.clear()
    scheduler.execute(query)
    assert logger.lines == []

    store.add_events("test_events", [(3, {"value": "three"})])
    scheduler.execute(query)
    assert [line["columns"]["value"] for line in logger.lines] == ["three"]
    assert [line["action"] for line in logger.lines] == ["added"]


def test_event_marks_survive_restart(tmp_path, fake_tables):
    schedule = {"events": {"query": "SELECT value FROM test_events", "interval": 1}}
    scheduler, logger = make_scheduler(tmp_path, schedule)
    Store(tmp_path / "sensor.db").add_events("test_events", [(1, {"value": "one"})])
    scheduler.execute(scheduler.config.schedule["events"])
    restarted, logger = make_scheduler(tmp_path, schedule)
    restarted.execute(restarted.config.schedule["events"])
    assert logger.lines == []


def test_adhoc_query_sees_all_events(tmp_path, fake_tables):
    store = Store(tmp_path / "sensor.db")
    store.add_events("test_events", [(5, {"value": "a"}), (9, {"value": "b"})])
    engine = Engine(store)
    assert len(engine.execute("SELECT * FROM test_events").rows) == 2
    result = engine.execute("SELECT value FROM test_events WHERE time > 6")
    assert result.rows == [("b",)]
    eids = engine.execute("SELECT eid FROM test_events").rows
    assert eids == [("0000000001",), ("0000000002",)]


async def test_failed_query_is_counted(tmp_path, fake_tables, caplog):
    schedule = {"bad": {"query": "SELECT * FROM nope", "interval": 1}}
    scheduler, logger = make_scheduler(tmp_path, schedule)
    lines = await scheduler.run_once(scheduler.config.schedule["bad"])
    assert lines == []
    assert scheduler.failures == {"bad": 1}
    assert "no such table: nope" in caplog.text


def test_snapshots_have_their_own_log(tmp_path, items):
    from sensor.loggers import FilesystemLogger

    schedule = {
        "items": ITEMS_QUERY["items"],
        "snap": {**ITEMS_QUERY["items"], "snapshot": True},
    }
    scheduler, _ = make_scheduler(tmp_path, schedule)
    results, snapshots = tmp_path / "results.log", tmp_path / "snapshots.log"
    scheduler.loggers = [FilesystemLogger(str(results), str(snapshots))]
    for query in scheduler.config.schedule.values():
        scheduler.execute(query)
    scheduler.loggers[0].close()
    result_names = {
        json.loads(line)["name"] for line in results.read_text().splitlines()
    }
    snapshot_lines = [json.loads(line) for line in snapshots.read_text().splitlines()]
    assert result_names == {"items"}
    assert [line["name"] for line in snapshot_lines] == ["snap"]


async def test_repeated_failures_are_rate_limited(tmp_path, fake_tables, caplog):
    schedule = {"bad": {"query": "SELECT * FROM test_files", "interval": 1}}
    scheduler, _ = make_scheduler(tmp_path, schedule)
    now = [1000.0]
    scheduler.clock = lambda: now[0]
    query = scheduler.config.schedule["bad"]
    for _ in range(5):
        await scheduler.run_once(query)
        now[0] += 1
    now[0] += 300
    await scheduler.run_once(query)
    errors = [record.getMessage() for record in caplog.records]
    assert len(errors) == 2
    assert errors[0].endswith("(count=1 total=1)")
    assert errors[1].endswith("(count=5 total=6)")
    assert scheduler.failures == {"bad": 6}


async def test_slow_query_leaves_event_loop_free(tmp_path, fake_tables):
    schedule = {"slow": {"query": "SELECT n FROM test_slow", "interval": 1}}
    scheduler, logger = make_scheduler(tmp_path, schedule)
    fake_tables.SLOW_GATE.clear()
    received = []
    send, receive = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run_once, scheduler.config.schedule["slow"])
        # While the query blocks in its worker thread, other tasks still run:
        # this exchange would never finish if SQL ran on the event loop.
        for value in range(5):
            await send.send(value)
            received.append(await receive.receive())
        assert not fake_tables.SLOW_GATE.is_set()
        fake_tables.SLOW_GATE.set()
    assert received == [0, 1, 2, 3, 4]
    assert [line["columns"]["n"] for line in logger.lines] == ["1"]


def test_run_longer_than_interval_is_logged(tmp_path, items, caplog):
    scheduler, _ = make_scheduler(tmp_path, ITEMS_QUERY)
    query = scheduler.config.schedule["items"]
    scheduler._warn_if_late(query, 0.5)
    assert caplog.records == []
    scheduler._warn_if_late(query, 4.0)
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("scheduled query items took 4.0 s")
