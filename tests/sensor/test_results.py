import json

from sensor.results import Diff, calendar_time, diff_rows, format_rows, format_snapshot

HEADER = dict(host="web1", unix_time=1796000000, epoch=3, counter=7, numerics=False)


def test_diff_finds_added_and_removed():
    before = [{"pid": 1}, {"pid": 2}]
    after = [{"pid": 2}, {"pid": 3}]
    diff = diff_rows(before, after)
    assert diff.added == [{"pid": 3}]
    assert diff.removed == [{"pid": 1}]


def test_diff_counts_duplicate_rows():
    diff = diff_rows([{"a": 1}], [{"a": 1}, {"a": 1}])
    assert diff.added == [{"a": 1}]
    assert diff.removed == []


def test_diff_of_same_rows_is_empty():
    rows = [{"a": 1, "b": "x"}]
    diff = diff_rows(rows, [{"b": "x", "a": 1}])
    assert diff == Diff(added=[], removed=[])


def test_line_has_osquery_keys():
    diff = Diff(added=[{"pid": 5, "name": None}], removed=[])
    (line,) = format_rows("procs", diff, **HEADER)
    record = json.loads(line)
    assert list(record) == [
        "name",
        "hostIdentifier",
        "calendarTime",
        "unixTime",
        "epoch",
        "counter",
        "numerics",
        "columns",
        "action",
    ]
    assert record["name"] == "procs"
    assert record["hostIdentifier"] == "web1"
    assert record["unixTime"] == 1796000000
    assert record["epoch"] == 3
    assert record["counter"] == 7
    assert record["action"] == "added"
    assert record["columns"] == {"pid": "5", "name": ""}


def test_numerics_keep_numbers():
    diff = Diff(added=[{"pid": 5}], removed=[{"pid": 4}])
    lines = format_rows("procs", diff, **{**HEADER, "numerics": True})
    records = [json.loads(line) for line in lines]
    assert [record["action"] for record in records] == ["removed", "added"]
    assert records[1]["columns"] == {"pid": 5}
    assert records[1]["numerics"] is True


def test_calendar_time_matches_osquery():
    assert calendar_time(0) == "Thu Jan  1 00:00:00 1970 UTC"


def test_snapshot_line():
    line = json.loads(format_snapshot("s", [{"a": 1}, {"a": 2}], **HEADER))
    assert line["action"] == "snapshot"
    assert line["snapshot"] == [{"a": "1"}, {"a": "2"}]


def test_escaped_file_names_stay_json():
    diff = Diff(added=[{"path": "/tmp/caf\\xe9"}], removed=[])
    (line,) = format_rows("f", diff, **HEADER)
    assert json.loads(line)["columns"]["path"] == "/tmp/caf\\xe9"


def test_blob_and_infinity_stay_valid_json():
    diff = Diff(added=[{"b": b"\xff\x00", "f": float("inf")}], removed=[])
    for numerics in (False, True):
        (line,) = format_rows("f", diff, **{**HEADER, "numerics": numerics})
        columns = json.loads(line)["columns"]
        assert columns == {"b": "\\xff\\x00", "f": "inf"}


def test_columns_are_sorted_like_osquery():
    diff = Diff(added=[{"pid": 1, "name": "init", "cmdline": ""}], removed=[])
    (line,) = format_rows("p", diff, **HEADER)
    assert list(json.loads(line)["columns"]) == ["cmdline", "name", "pid"]
    snapshot = json.loads(format_snapshot("s", [{"b": 1, "a": 2}], **HEADER))
    assert list(snapshot["snapshot"][0]) == ["a", "b"]
