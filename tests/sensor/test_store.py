import pytest

from sensor.store import Store


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "sensor.db")
    yield store
    store.close()


def stored_names(store, subscriber):
    return [fields["name"] for _, _, fields in store.select_events(subscriber)]


def test_drop_oldest_by_time_then_eid(store):
    store.add_events("file_events", [(30, {"name": "a"}), (10, {"name": "b"})])
    store.add_events("file_events", [(10, {"name": "c"}), (20, {"name": "d"})])
    store.add_events("process_events", [(1, {"name": "p"})])

    assert store.drop_oldest("file_events", 2) == 2
    assert stored_names(store, "file_events") == ["a", "d"]
    assert stored_names(store, "process_events") == ["p"]


def test_drop_oldest_more_than_stored(store):
    store.add_events("file_events", [(1, {"name": "a"})])
    assert store.drop_oldest("file_events", 5) == 1
    assert store.count_events("file_events") == 0
    assert store.drop_oldest("file_events", 5) == 0
