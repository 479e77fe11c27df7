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
        ("[bogus]\n", "unknown section [bogus]"),
        ("[file_paths]\netc = '/etc/**'\n", "file_paths.etc must be an array"),
        (
            "[file_paths]\netc = ['etc/**']\n",
            "file_paths.etc: invalid pattern 'etc/**'",
        ),
        ("[file_paths]\netc = ['/etc/%%/x']\n", "file_paths.etc: invalid pattern"),
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
