import io
import json
import signal
import subprocess
import sys
import time

import pytest
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from sensor.engine import Engine
from sensor.errors import ConfigError
from sensor.shell import Shell


def run_lines(*lines, engine=None):
    stdout = io.StringIO()
    # Errors go to stderr; sharing one stream keeps them in order with results.
    shell = Shell(
        engine or Engine(),
        stdin=io.StringIO("\n".join(lines) + "\n"),
        stdout=stdout,
        stderr=stdout,
    )
    status = shell.run()
    return status, stdout.getvalue()


def test_statement_spans_lines():
    status, output = run_lines("SELECT 1 AS one,", "  2 AS two;")
    assert status == 0
    assert "| one | two |" in output
    assert "| 1   | 2   |" in output


def test_bad_statement_prints_one_error_and_goes_on():
    status, output = run_lines("SELEC 1;", "SELECT 5 AS five;")
    lines = output.splitlines()
    assert lines[0] == 'Error: near "SELEC": syntax error'
    assert "| five |" in output
    assert status == 1


def test_mode_json_and_line():
    _, output = run_lines(
        ".mode json", "SELECT 1 AS a;", ".mode line", "SELECT 2 AS b;"
    )
    json_text, line_text = output.split("]\n")
    assert json.loads(json_text + "]") == [{"a": 1}]
    assert line_text.strip() == "b = 2"


def test_mode_csv_and_list():
    _, output = run_lines(
        ".mode csv", "SELECT 1 AS a, 'x,y' AS b;", ".mode list", "SELECT 3 AS c;"
    )
    assert output.splitlines() == ["a,b", '1,"x,y"', "c", "3"]


def test_invalid_mode_is_rejected():
    _, output = run_lines(".mode fancy")
    assert output.startswith("Error: invalid mode 'fancy'")


def test_tables_lists_registry():
    _, output = run_lines(".tables")
    assert "  => processes" in output.splitlines()
    assert "  => file_events" in output.splitlines()


def test_tables_filter():
    _, output = run_lines(".tables _events")
    assert output.splitlines() == ["  => file_events", "  => sensor_events"]


def test_schema_of_one_table():
    _, output = run_lines(".schema sensor_events")
    assert output.startswith("CREATE TABLE `sensor_events` (")
    assert "`dropped` BIGINT" in output


def test_schema_of_unknown_table():
    _, output = run_lines(".schema nope")
    assert output.strip() == "Error: no such table: nope"


def test_all_selects_every_column(fake_tables):
    _, output = run_lines(".all test_numbers")
    assert "| n | name     |" in output
    assert "| 9 | number 9 |" in output


def test_timer_prints_run_time():
    _, output = run_lines(".timer on", "SELECT 1;")
    assert "Run Time: real " in output


def test_unknown_meta_command():
    _, output = run_lines(".frobnicate")
    assert (
        output.strip() == "Error: unknown command .frobnicate; enter .help for the list"
    )


def test_quit_stops_reading():
    _, output = run_lines(".quit", "SELECT 1 AS never;")
    assert "never" not in output


def test_help_lists_meta_commands():
    _, output = run_lines(".help")
    for command in (".all", ".mode", ".quit", ".schema", ".tables", ".timer"):
        assert command in output


def test_history_is_kept_between_runs(tmp_path):
    history = tmp_path / "history"
    for statement in ("SELECT 11;", "SELECT 22;"):
        with create_pipe_input() as pipe:
            pipe.send_text(statement + "\r.quit\r")
            stdout = io.StringIO()
            shell = Shell(
                Engine(),
                history_path=str(history),
                stdout=stdout,
                prompt_input=pipe,
                prompt_output=DummyOutput(),
            )
            assert shell.run() == 0
        assert "11" in stdout.getvalue() or "22" in stdout.getvalue()
    remembered = list(FileHistory(str(history)).load_history_strings())
    assert "SELECT 11;" in remembered
    assert "SELECT 22;" in remembered


def test_shell_command_reads_stdin():
    completed = subprocess.run(
        [sys.executable, "-m", "sensor.cli", "shell"],
        input="SELECT 40 + 2 AS answer;\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0
    assert "| 42     |" in completed.stdout


def test_errors_go_to_stderr():
    stdout, stderr = io.StringIO(), io.StringIO()
    shell = Shell(
        Engine(),
        stdin=io.StringIO("SELEC 1;\nSELECT 2 AS b;\n"),
        stdout=stdout,
        stderr=stderr,
    )
    assert shell.run() == 1
    assert stderr.getvalue() == 'Error: near "SELEC": syntax error\n'
    assert "Error" not in stdout.getvalue()


def test_mode_and_timer_show_setting():
    _, output = run_lines(".mode", ".mode csv", ".mode", ".timer")
    assert output.splitlines() == [
        "current output mode: pretty",
        "current output mode: csv",
        "timer is off",
    ]


def run_interactive(history, keys):
    stdout = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        shell = Shell(
            Engine(),
            history_path=str(history),
            stdout=stdout,
            stderr=stdout,
            prompt_input=pipe,
            prompt_output=DummyOutput(),
        )
        status = shell.run()
    return status, stdout.getvalue()


def test_multiline_statement_is_one_history_entry(tmp_path):
    history = tmp_path / "history"
    status, output = run_interactive(history, "SELECT 6 *\r7 AS answer;\r.quit\r")
    assert status == 0
    assert "| 42     |" in output
    remembered = list(FileHistory(str(history)).load_history_strings())
    assert "SELECT 6 *\n7 AS answer;" in remembered


def test_history_file_is_private(tmp_path):
    history = tmp_path / "history"
    run_interactive(history, ".quit\r")
    assert history.stat().st_mode & 0o777 == 0o600


def test_unusable_history_path_is_one_line(tmp_path):
    # A directory cannot be the history file.
    with pytest.raises(ConfigError) as raised:
        run_interactive(tmp_path, ".quit\r")
    message = str(raised.value)
    assert message.startswith(f"history file {tmp_path}: cannot open: ")
    assert message.endswith("choose another with --history FILE")


def test_sigint_cancels_query_and_shell_goes_on():
    # The query never leaves SQLite; SIGINT must still stop it, and the next
    # statement must run.
    process = subprocess.Popen(
        [sys.executable, "-m", "sensor.cli", "shell"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        process.stdin.write(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            "SELECT count(*) FROM c;\nSELECT 7 AS after;\n"
        )
        process.stdin.close()
        time.sleep(1)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        stdout, stderr = process.stdout.read(), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert stderr == "Error: interrupted\n"
    assert "| 7     |" in stdout


def test_history_parent_is_not_created(tmp_path):
    history = tmp_path / "missing" / "history"
    with pytest.raises(ConfigError) as raised:
        run_interactive(history, ".quit\r")
    assert "No such file or directory" in str(raised.value)
    assert not (tmp_path / "missing").exists()


def test_all_without_table_name():
    _, output = run_lines(".all")
    assert output.strip() == "Error: missing table name; usage: .all TABLE"
