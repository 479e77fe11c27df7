import os
import shutil
import subprocess
import threading
import time

import pytest

from sensor.engine import Engine
from tables import processes

PYTHON_TYPES = {"TEXT": str, "INTEGER": int, "BIGINT": int}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture
def start_process(tmp_path):
    """Start processes that the test owns, and kill each by its pid at teardown."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        child = subprocess.Popen(args, cwd=tmp_path, stdin=subprocess.DEVNULL)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.poll() is None:
            os.kill(child.pid, 9)
        child.wait()


def process_row(engine: Engine, pid: int) -> dict:
    rows = engine.execute(f"SELECT * FROM processes WHERE pid = {pid}").dicts()
    assert len(rows) == 1, rows
    return rows[0]


def wait_for_exec(pid: int, name: str) -> None:
    # Popen returns once the child has forked, and the exec that renames it
    # follows shortly after.
    for _ in range(500):
        with open(f"/proc/{pid}/comm") as comm:
            if comm.read().rstrip("\n") == name:
                return
        time.sleep(0.01)
    pytest.fail(f"pid {pid} did not exec {name}")


def test_child_row(engine, start_process, tmp_path):
    child = start_process("sleep", "30")
    wait_for_exec(child.pid, "sleep")
    row = process_row(engine, child.pid)
    assert row["name"] == "sleep"
    assert row["cmdline"] == "sleep 30"
    assert row["path"] == os.path.realpath(shutil.which("sleep"))
    assert row["on_disk"] == 1
    assert row["cwd"] == str(tmp_path)
    assert row["root"] == "/"
    assert row["parent"] == os.getpid()
    assert row["uid"] == os.getuid()
    assert row["euid"] == os.geteuid()
    assert row["gid"] == os.getgid()
    assert row["egid"] == os.getegid()
    assert row["state"] in ("S", "R")
    assert row["threads"] == 1
    assert row["wired_size"] == 0
    assert row["resident_size"] > 0
    assert row["total_size"] >= row["resident_size"]


def test_child_start_time_near_now(engine, start_process):
    child = start_process("sleep", "30")
    row = process_row(engine, child.pid)
    # start_time adds the start tick count to the kernel's boot time, which may be
    # off the wall clock by a little. An hour bounds any such skew.
    assert abs(row["start_time"] - time.time()) < 3600


def test_own_process_row(engine):
    row = process_row(engine, os.getpid())
    assert row["parent"] == os.getppid()
    assert row["uid"] == os.getuid()
    assert row["state"] == "R"
    assert "pytest" in row["cmdline"]
    assert row["user_time"] >= 0
    assert row["system_time"] >= 0
    assert row["disk_bytes_read"] is None or row["disk_bytes_read"] >= 0


def test_own_process_in_full_scan(engine):
    rows = engine.execute("SELECT pid, parent FROM processes").rows
    assert (os.getpid(), os.getppid()) in rows
    assert len(rows) == len({pid for pid, _ in rows})


def test_reaped_pid_gives_no_row(engine):
    child = subprocess.Popen(["true"])
    child.wait()
    rows = engine.execute(f"SELECT * FROM processes WHERE pid = {child.pid}").rows
    assert rows == []


def test_pid_in_returns_both(engine, start_process):
    first = start_process("sleep", "30")
    second = start_process("sleep", "30")
    rows = engine.execute(
        f"SELECT pid FROM processes WHERE pid IN ({first.pid}, {second.pid})"
    ).rows
    assert sorted(rows) == sorted([(first.pid,), (second.pid,)])


def test_pid_as_text_constraint(engine):
    rows = engine.execute(f"SELECT pid FROM processes WHERE pid = '{os.getpid()}'").rows
    assert rows == [(os.getpid(),)]


def test_thread_id_gives_no_row(engine):
    ready = threading.Event()
    done = threading.Event()
    native_ids = []

    def run() -> None:
        native_ids.append(threading.get_native_id())
        ready.set()
        done.wait()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        ready.wait()
        rows = engine.execute(
            f"SELECT pid FROM processes WHERE pid = {native_ids[0]}"
        ).rows
    finally:
        done.set()
        thread.join()
    assert native_ids[0] != os.getpid()
    assert rows == []


def test_deleted_binary_not_on_disk(engine, start_process, tmp_path):
    binary = tmp_path / "sleep-copy"
    shutil.copy(shutil.which("sleep"), binary)
    child = start_process(str(binary), "30")
    wait_for_exec(child.pid, "sleep-copy")
    binary.unlink()
    row = process_row(engine, child.pid)
    assert row["path"] == str(binary)
    assert row["on_disk"] == 0


def test_name_with_parenthesis(engine, start_process, tmp_path):
    # The comm sits in parentheses in /proc/<pid>/stat, so ") " inside it must
    # not end it early.
    binary = tmp_path / "a) b (c"
    shutil.copy(shutil.which("sleep"), binary)
    child = start_process(str(binary), "30")
    wait_for_exec(child.pid, "a) b (c")
    row = process_row(engine, child.pid)
    assert row["name"] == "a) b (c"
    assert row["parent"] == os.getpid()
    assert row["state"] in ("S", "R")


def test_column_subset_reads_those_columns(engine, start_process, tmp_path):
    child = start_process("sleep", "30")
    wait_for_exec(child.pid, "sleep")
    rows = engine.execute(
        f"SELECT cwd, cgroup_path FROM processes WHERE pid = {child.pid}"
    ).rows
    assert rows[0][0] == str(tmp_path)
    assert rows[0][1] is not None


def test_every_column_has_declared_type(engine):
    schema = processes.SCHEMA
    result = engine.execute("SELECT * FROM processes")
    assert result.columns == list(schema.column_names)
    assert result.rows
    for row in result.rows:
        for column, value in zip(schema.columns, row):
            if value is not None:
                assert type(value) is PYTHON_TYPES[column.type], (column.name, value)


def test_proc_root_fixture_tree(tmp_path, monkeypatch, engine):
    # A process whose io file cannot be read keeps its disk columns NULL. Root may
    # read any file, so a directory in place of the file makes the read fail.
    process = tmp_path / "42"
    process.mkdir()
    (process / "stat").write_bytes(
        b"42 (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 5 3 0 1000 "
        b"8192 2 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
    )
    (process / "status").write_bytes(
        b"Name:\todd) name\nTgid:\t42\nUid:\t1000\t1001\t1002\t1003\n"
        b"Gid:\t2000\t2001\t2002\t2003\nVmSize:\t     8 kB\nVmRSS:\t     4 kB\n"
    )
    (process / "cmdline").write_bytes(b"odd\0--flag\0value\0")
    (process / "cgroup").write_bytes(b"0::/user.slice/a:b\n")
    (process / "io").mkdir()
    (tmp_path / "stat").write_bytes(b"cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    monkeypatch.setattr(processes, "PROC_ROOT", str(tmp_path))

    row = engine.execute("SELECT * FROM processes").dicts()[0]
    assert row["pid"] == 42
    assert row["name"] == "odd) name"
    assert row["cmdline"] == "odd --flag value"
    assert (row["uid"], row["euid"], row["suid"]) == (1000, 1001, 1002)
    assert (row["gid"], row["egid"], row["sgid"]) == (2000, 2001, 2002)
    assert row["total_size"] == 8 * 1024
    assert row["resident_size"] == 4 * 1024
    ticks = os.sysconf("SC_CLK_TCK")
    assert row["user_time"] == 250 * 1000 // ticks
    assert row["system_time"] == 50 * 1000 // ticks
    assert row["start_time"] == 1700000000 + 1000 // ticks
    assert (row["parent"], row["pgroup"]) == (1, 42)
    assert (row["nice"], row["threads"]) == (5, 3)
    assert row["cgroup_path"] == "/user.slice/a:b"
    assert row["disk_bytes_read"] is None
    assert row["disk_bytes_written"] is None
    assert row["path"] == ""
    assert row["on_disk"] == -1


def test_split_scan_matches_single_scan(monkeypatch):
    # Lowering the threshold makes even this machine's process list take the
    # forked path; the pids of both halves must come back once each.
    single = Engine().execute("SELECT pid FROM processes").rows
    monkeypatch.setattr(processes, "PARALLEL_SCAN_MINIMUM", 0)
    split = Engine().execute("SELECT pid FROM processes").rows
    assert len(split) == len(set(split))
    common = set(single) & set(split)
    assert len(common) >= len(single) - 5
