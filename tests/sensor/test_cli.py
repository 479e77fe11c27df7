import csv
import io
import json
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
    assert list(csv.reader(io.StringIO(completed.stdout))) == [["n", "s", "z"], ["1", "a b", ""]]


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
