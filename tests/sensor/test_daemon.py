"""The daemon as a user runs it: a subprocess on a config file, stopped by SIGTERM."""

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

# Deadline for each wait on the daemon; generous so slow CI machines pass, and
# never asserted on.
WAIT_SECONDS = 60


def sensor_command(*arguments):
    return [sys.executable, "-m", "sensor.cli", *arguments]


@pytest.fixture
def daemon_config(tmp_path):
    watched = tmp_path / "watched"
    watched.mkdir()
    marker = f"sns-marker-{uuid.uuid4().hex}"
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[options]
database_path = "var/sensor.db"
logger_path = "var/log"
logger_plugin = "filesystem"
host_identifier = "specified"
specified_identifier = "test-host"

[file_paths]
watched = ["{watched}/**"]

[schedule.alive]
query = "SELECT 1 AS alive"
interval = 1

[schedule.marked]
query = "SELECT pid, cmdline FROM processes WHERE cmdline LIKE '%{marker}%'"
interval = 1
"""
    )
    return config, watched, marker, tmp_path / "var/log/sensor.results.log"


class Daemon:
    def __init__(self, config):
        self.process = subprocess.Popen(
            sensor_command("run", "--config", str(config)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=WAIT_SECONDS)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def read_lines(log_path):
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def wait_for(predicate, description):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {description}")


def marked_lines(log_path, action, pid):
    return [
        line
        for line in read_lines(log_path)
        if line["name"] == "marked"
        and line["action"] == action
        and line["columns"]["pid"] == str(pid)
    ]


def query_events(config):
    completed = subprocess.run(
        sensor_command(
            "query",
            "--config",
            str(config),
            "--json",
            "SELECT target_path, action FROM file_events",
        ),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_daemon_end_to_end(daemon_config):
    config, watched, marker, log_path = daemon_config
    daemon = Daemon(config)
    child = None
    try:
        wait_for(lambda: read_lines(log_path), "the first result line")

        # A new process is logged as added, then as removed once it exits.
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)", marker]
        )
        added = wait_for(lambda: marked_lines(log_path, "added", child.pid), "added")
        assert added[0]["hostIdentifier"] == "test-host"
        assert marker in added[0]["columns"]["cmdline"]
        child.kill()
        child.wait()
        wait_for(lambda: marked_lines(log_path, "removed", child.pid), "removed")

        # File events reach the database, where a one-shot query reads them
        # while the daemon is still running.
        target = watched / "created.txt"
        target.write_text("hello")
        wait_for(
            lambda: any(e["target_path"] == str(target) for e in query_events(config)),
            "a file event visible to sensor query",
        )
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        status = daemon.stop()
    assert status == 0, daemon.process.stderr.read()

    # Restarted, the daemon does not log its baseline again, and the events
    # collected by the first run are still there.
    baseline = [line for line in read_lines(log_path) if line["name"] == "alive"]
    assert len(baseline) == 1
    counter = _alive_counter(config)
    restarted = Daemon(config)
    try:
        # Each scheduled run stores its counter; waiting for it to move proves
        # that the restarted daemon ran the query.
        wait_for(lambda: _alive_counter(config) > counter, "a run after restart")
    finally:
        status = restarted.stop()
    assert status == 0, restarted.process.stderr.read()
    assert [
        line for line in read_lines(log_path) if line["name"] == "alive"
    ] == baseline
    assert not (config.parent / "var/sensor.db.pid").exists()
    paths = [event["target_path"] for event in query_events(config)]
    assert str(target) in paths


def _alive_counter(config):
    from sensor.store import Store

    store = Store(config.parent / "var/sensor.db")
    try:
        previous = store.previous_results("alive")
    finally:
        store.close()
    return previous[1] if previous else -1


def test_repeated_sigterm_still_exits_zero(daemon_config):
    # Supervisors such as timeout(1) signal the daemon and then its process
    # group, so a second SIGTERM often arrives while the first is handled.
    config, _, _, log_path = daemon_config
    daemon = Daemon(config)
    try:
        wait_for(lambda: read_lines(log_path), "the first result line")
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.send_signal(signal.SIGTERM)
    finally:
        status = daemon.stop()
    stderr = daemon.process.stderr.read()
    assert status == 0, stderr
    assert "sensor stopped" in stderr


def test_sigterm_interrupts_running_query(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        """
[options]
logger_plugin = "filesystem"

[schedule.forever]
query = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
interval = 1
"""
    )
    daemon = Daemon(config)
    try:
        wait_for(lambda: _stderr_has(daemon, "sensor started"), "the daemon to start")
        daemon.process.send_signal(signal.SIGTERM)
    finally:
        status = daemon.stop()
    assert status == 0


def _stderr_has(daemon, text):
    # The daemon logs to stderr, which this reads line by line without blocking
    # past the first line that contains `text`.
    line = daemon.process.stderr.readline()
    return text in line


def test_second_daemon_on_same_database_is_rejected(daemon_config):
    config, _, _, log_path = daemon_config
    first = Daemon(config)
    try:
        wait_for(lambda: read_lines(log_path), "the first result line")
        second = subprocess.run(
            sensor_command("run", "--config", str(config)),
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS,
        )
    finally:
        status = first.stop()
    assert status == 0
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1
    assert f"another sensor daemon (pid {first.process.pid})" in second.stderr
