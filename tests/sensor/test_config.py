import os
import subprocess
import sys

import pytest

from sensor.config import load_config
from sensor.errors import ConfigError

GOOD = """
[options]
database_path = "db/sensor.db"
logger_path = "log"
events_expiry = 60
events_max = 100

[file_paths]
etc = ["/etc/**", "/etc/%.conf"]

[schedule.processes]
query = "SELECT pid FROM processes"
interval = 5
"""


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_good_config(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.options.events_expiry == 60
    assert config.options.database_path == os.path.join(tmp_path, "db/sensor.db")
    assert config.options.result_log_path == os.path.join(
        tmp_path, "log", "sensor.results.log"
    )
    assert config.file_paths == {"etc": ("/etc/**", "/etc/%.conf")}
    assert config.schedule["processes"].interval == 5
    assert config.schedule["processes"].removed is True


def test_defaults_apply(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.options.events_max > 0
    assert config.options.logger_plugins == ("filesystem",)
    assert config.schedule == {}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[options]\nbogus = 1\n", "unknown option options.bogus"),
        (
            "[options]\nevents_expiry = 'x'\n",
            "options.events_expiry must be an integer",
        ),
        ("[options]\nevents_max = true\n", "options.events_max must be an integer"),
        ("[options]\nevents_max = 0\n", "options.events_max must be positive"),
        (
            "[options]\nhost_identifier = 'mac'\n",
            "options.host_identifier must be one of",
        ),
        ("[options]\nlogger_plugin = 'kafka'\n", "unknown plugin 'kafka'"),
        ("[bogus]\n", "unknown top-level key 'bogus'"),
        ("[file_paths]\netc = '/etc/**'\n", "file_paths.etc must be an array"),
        (
            "[file_paths]\netc = ['etc/**']\n",
            "file_paths.etc: file path pattern 'etc/**' is not absolute",
        ),
        ("[file_paths]\netc = ['/etc/%%/x']\n", "file_paths.etc: file path pattern"),
        ("[schedule.p]\nquery = 'SELECT 1'\n", "schedule.p.interval is missing"),
        (
            "[schedule.p]\nquery = 'SELECT 1'\ninterval = 0\n",
            "schedule.p.interval must be",
        ),
        ("[schedule.p]\nquery = 'SELECT 1'\ninterval = 1\nfoo = 2\n", "schedule.p.foo"),
        ("[options\n", "invalid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "absent.toml")
    assert "absent.toml: config file not found" in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "[options]\nbogus = 1\n",
        "[file_paths]\nx = ['rel']\n",
        "[options]\nevents_max = 'a'\n",
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, text):
    path = write(tmp_path, text)
    for command in (
        ["run", "--config", str(path)],
        ["query", "--config", str(path), "SELECT 1"],
    ):
        completed = subprocess.run(
            [sys.executable, "-m", "sensor.cli", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 2
        assert completed.stderr.count("\n") == 1
        assert str(path) in completed.stderr


def test_missing_config_exits_2(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor.cli",
            "run",
            "--config",
            str(tmp_path / "no.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().endswith("config file not found")


def test_non_utf8_config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "not UTF-8" in str(raised.value)


def test_exclude_needs_known_category(tmp_path):
    text = "[file_paths]\netc = ['/etc/**']\n[exclude_paths]\nhome = ['/home/%%']\n"
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert "exclude_paths.home: no category 'home' in [file_paths]" in str(raised.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[options]\ndatabase_path = 'afile/x.db'\n", "options.database_path: cannot"),
        ("[options]\ndatabase_path = 'adir'\n", "adir is a directory"),
        ("[options]\nlogger_path = 'afile'\n", "afile is not a directory"),
        (
            "[schedule.p]\nquery = 'SELECT * FROM file'\ninterval = 1\n",
            "schedule.p.query: table file requires",
        ),
        ("[schedule.p]\nquery = 'SELEC 1'\ninterval = 1\n", "schedule.p.query: near"),
        (
            "[schedule.p]\nquery = 'SELECT * FROM nosuch'\ninterval = 1\n",
            "schedule.p.query: no such table: nosuch",
        ),
        (
            "[schedule.p]\nquery = 'SELECT 1; SELECT 2'\ninterval = 1\n",
            "schedule.p.query: contains 2 statements",
        ),
        (
            "[schedule.p]\nquery = '-- only a comment'\ninterval = 1\n",
            "schedule.p.query: contains 0 statements",
        ),
    ],
)
def test_daemon_rejects_unusable_config(tmp_path, text, expected):
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    path = write(tmp_path, text)
    completed = subprocess.run(
        [sys.executable, "-m", "sensor.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith(f"sensor: {path}: ")
    assert expected in completed.stderr


def test_query_does_not_create_database(tmp_path):
    path = write(tmp_path, "[options]\ndatabase_path = 'db/sensor.db'\n")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor.cli",
            "query",
            "--config",
            str(path),
            "SELECT 1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "database" in completed.stderr
    assert "not found" in completed.stderr
    assert not (tmp_path / "db").exists()


def test_file_accesses_names_categories(tmp_path):
    text = "file_accesses = ['etc']\n[file_paths]\netc = ['/etc/**']\n"
    assert load_config(write(tmp_path, text)).file_accesses == ("etc",)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("file_accesses = ['home']\n", "file_accesses: no category 'home'"),
        ("file_accesses = 'etc'\n", "file_accesses must be an array"),
        ("[file_paths]\n'' = ['/etc/**']\n", "a category name must not be empty"),
        ("[options]\nread_max = 0\n", "options.read_max must be positive"),
    ],
)
def test_more_bad_config(tmp_path, text, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert expected in str(raised.value)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_config(tmp_path):
    with open(os.path.join(REPO, "README.md")) as stream:
        readme = stream.read()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    return write(tmp_path, block)


@pytest.mark.parametrize("source", ["config.toml", "README.md"])
def test_documented_configs_are_valid(tmp_path, source):
    from sensor.engine import Engine

    if source == "README.md":
        path = readme_config(tmp_path)
    else:
        path = os.path.join(REPO, source)
    config = load_config(path)
    assert config.schedule
    for query in config.schedule.values():
        assert Engine().check(query.query) == 1
