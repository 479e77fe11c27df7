import csv
import io
import json
import os
import subprocess
import sys


def sensor(*arguments, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "sensor.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SQL = "SELECT 1 AS n, 'a b' AS s, NULL AS z"


def test_query_pretty_by_default():
    completed = sensor("query", SQL)
    assert completed.returncode == 0
    assert completed.stdout.splitlines() == [
        "+---+-----+---+",
        "| n | s   | z |",
        "+---+-----+---+",
        "| 1 | a b |   |",
        "+---+-----+---+",
    ]


def test_query_json_keeps_types():
    completed = sensor("query", "--json", SQL)
    assert json.loads(completed.stdout) == [{"n": 1, "s": "a b", "z": None}]


def test_query_csv():
    completed = sensor("query", "--csv", SQL)
    assert list(csv.reader(io.StringIO(completed.stdout))) == [
        ["n", "s", "z"],
        ["1", "a b", ""],
    ]


def test_query_line():
    completed = sensor("query", "--line", SQL)
    assert completed.stdout.splitlines() == ["n = 1", "s = a b", "z = "]


def test_bad_sql_exits_nonzero_with_one_line():
    completed = sensor("query", "SELECT * FROM nope")
    assert completed.returncode == 1
    assert completed.stderr == "sensor: no such table: nope\n"
    assert completed.stdout == ""


def test_query_help_lists_tables():
    completed = sensor("query", "--help")
    assert completed.returncode == 0
    assert "  processes: " in completed.stdout
    assert "requires: path or directory (=, IN or LIKE)" in completed.stdout


def test_modes_are_exclusive():
    completed = sensor("query", "--json", "--csv", "SELECT 1")
    assert completed.returncode == 2


def test_raw_non_utf8_bytes_in_sql(tmp_path):
    name = os.path.join(os.fsencode(tmp_path), b"bad\xff\xfename")
    with open(name, "wb") as stream:
        stream.write(b"12345")
    sql = b"SELECT size FROM file WHERE path = '" + name + b"'"
    completed = subprocess.run(
        [sys.executable, "-m", "sensor.cli", "query", "--json", sql],
        capture_output=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == [{"size": 5}]

    piped = subprocess.run(
        [sys.executable, "-m", "sensor.cli", "shell"],
        input=b".mode json\n" + sql + b";\n",
        capture_output=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout) == [{"size": 5}]


def test_json_blob_and_infinity():
    completed = sensor("query", "--json", "SELECT x'ff00' AS b, 1e400 AS f")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == [{"b": "\\xff\\x00", "f": "inf"}]


def test_events_without_config_hint():
    # sensor_events is also filled by the daemon, so it gets the same note.
    assert "--config" in sensor("query", "SELECT * FROM sensor_events").stderr
    completed = sensor("query", "SELECT count(*) FROM file_events")
    assert completed.returncode == 0
    assert "--config" in completed.stderr


def test_query_prints_every_statement():
    completed = sensor("query", "--csv", "SELECT 1 AS a; SELECT 2 AS b")
    assert completed.stdout.splitlines() == ["a", "1", "b", "2"]


def test_version_flag():
    completed = sensor("--version")
    assert completed.returncode == 0
    assert completed.stdout.startswith("sensor ")
