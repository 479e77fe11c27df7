"""The configuration file: osquery's config model written as TOML.

`[options]` contains flags, `[file_paths]` and `[exclude_paths]` map a category to a
list of patterns, and each `[schedule.<name>]` table is one scheduled query. Relative
paths in options are taken from the directory of the configuration file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

from sensor.errors import ConfigError

__all__ = [
    "Config",
    "Options",
    "ScheduledQuery",
    "create_directory",
    "load_config",
    "parse_config",
]

# Option name -> (type, default). Names and meanings follow osquery's flags.
_OPTIONS: dict[str, tuple[type, Any]] = {
    "database_path": (str, "var/sensor.db"),
    "logger_path": (str, "var/log"),
    "logger_plugin": (str, "filesystem"),
    "host_identifier": (str, "hostname"),
    "specified_identifier": (str, ""),
    "events_expiry": (int, 3600),
    "events_max": (int, 50000),
    "schedule_epoch": (int, 0),
    "log_numerics_as_numbers": (bool, False),
    "disable_events": (bool, False),
    # The maximum bytes read from one file, as in osquery: larger files are not hashed.
    "read_max": (int, 50 * 1024 * 1024),
}
_PATH_OPTIONS = ("database_path", "logger_path")
_HOST_IDENTIFIERS = ("hostname", "uuid", "specified")
_LOGGER_PLUGINS = ("filesystem", "stdout")
_SECTIONS = ("options", "file_paths", "exclude_paths", "file_accesses", "schedule")
_QUERY_KEYS: dict[str, type] = {
    "query": str,
    "interval": int,
    "removed": bool,
    "snapshot": bool,
    "description": str,
}


@dataclass(frozen=True)
class ScheduledQuery:
    name: str
    query: str
    interval: int
    removed: bool = True
    snapshot: bool = False
    description: str = ""


@dataclass(frozen=True)
class Options:
    database_path: str
    logger_path: str
    logger_plugin: str
    host_identifier: str
    specified_identifier: str
    events_expiry: int
    events_max: int
    schedule_epoch: int
    log_numerics_as_numbers: bool
    disable_events: bool
    read_max: int

    @property
    def result_log_path(self) -> str:
        return os.path.join(self.logger_path, "sensor.results.log")

    @property
    def snapshot_log_path(self) -> str:
        return os.path.join(self.logger_path, "sensor.snapshots.log")

    @property
    def logger_plugins(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.logger_plugin.split(","))


@dataclass(frozen=True)
class Config:
    path: str
    options: Options
    file_paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exclude_paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Categories of file_paths whose reads (OPENED, ACCESSED) are reported too.
    file_accesses: tuple[str, ...] = ()
    schedule: Mapping[str, ScheduledQuery] = field(default_factory=dict)


def create_directory(key: str, directory: str) -> None:
    """Create the directory that option `key` names a file in; raise ConfigError."""
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = directory
        while not os.path.lexists(blocker):
            blocker = os.path.dirname(blocker)
        raise ConfigError(
            f"{key}: cannot create {directory}: {blocker} is not a directory"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"{key}: cannot create {directory}: {error.strerror}"
        ) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; raise ConfigError with one line."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot read config file: {error.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: invalid TOML: not UTF-8 text (byte {error.start})"
        ) from None
    return parse_config(document, path)


def parse_config(document: Mapping[str, Any], path: str = "config.toml") -> Config:
    """Validate a parsed TOML document; `path` names the file in messages."""
    for section in document:
        if section not in _SECTIONS:
            expected = ", ".join(_SECTIONS)
            raise ConfigError(
                f"{path}: unknown top-level key {section!r}; expected {expected}"
            )
    base = os.path.dirname(os.path.abspath(path))
    file_paths = _parse_patterns(
        _table(document, "file_paths", path), "file_paths", path
    )
    exclude_paths = _parse_patterns(
        _table(document, "exclude_paths", path), "exclude_paths", path
    )
    for category in exclude_paths:
        if category not in file_paths:
            raise ConfigError(
                f"{path}: exclude_paths.{category}: no category {category!r} "
                "in [file_paths], so it would exclude nothing"
            )
    return Config(
        path=path,
        options=_parse_options(_table(document, "options", path), base, path),
        file_paths=file_paths,
        exclude_paths=exclude_paths,
        file_accesses=_parse_file_accesses(document, file_paths, path),
        schedule=_parse_schedule(_table(document, "schedule", path), path),
    )


def _table(document: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be a table, got {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    names = {str: "string", int: "integer", bool: "boolean", float: "float"}
    names.update({list: "array", dict: "table"})
    return names.get(type(value), type(value).__name__)


def _check_type(value: Any, expected: type, key: str, path: str) -> None:
    # bool is a subclass of int, so an integer option must reject true and false.
    if isinstance(value, expected) and not (
        expected is int and isinstance(value, bool)
    ):
        return
    wanted = _type_name(expected())
    article = "an" if wanted[0] in "aeiou" else "a"
    raise ConfigError(
        f"{path}: {key} must be {article} {wanted}, got {_type_name(value)}"
    )


def _parse_options(table: Mapping[str, Any], base: str, path: str) -> Options:
    values = {}
    for key, (kind, default) in _OPTIONS.items():
        value = table.get(key, default)
        _check_type(value, kind, f"options.{key}", path)
        values[key] = value
    for key in table:
        if key not in _OPTIONS:
            raise ConfigError(f"{path}: unknown option options.{key}")

    for key in ("events_expiry", "events_max", "read_max"):
        if values[key] <= 0:
            raise ConfigError(
                f"{path}: options.{key} must be positive, got {values[key]}"
            )
    if values["host_identifier"] not in _HOST_IDENTIFIERS:
        allowed = ", ".join(_HOST_IDENTIFIERS)
        raise ConfigError(
            f"{path}: options.host_identifier must be one of {allowed}, "
            f"got {values['host_identifier']!r}"
        )
    if values["host_identifier"] == "specified" and not values["specified_identifier"]:
        raise ConfigError(
            f"{path}: options.specified_identifier is required "
            "when host_identifier is 'specified'"
        )
    for plugin in values["logger_plugin"].split(","):
        if plugin.strip() not in _LOGGER_PLUGINS:
            allowed = ", ".join(_LOGGER_PLUGINS)
            raise ConfigError(
                f"{path}: options.logger_plugin: unknown plugin {plugin.strip()!r}; "
                f"expected a comma-separated list of {allowed}"
            )
    for key in _PATH_OPTIONS:
        if not values[key]:
            raise ConfigError(f"{path}: options.{key} must not be empty")
        values[key] = os.path.join(base, values[key])
    return Options(**values)


def _parse_patterns(
    table: Mapping[str, Any], section: str, path: str
) -> dict[str, tuple[str, ...]]:
    from sensor.paths import parse_pattern

    categories = {}
    for category, patterns in table.items():
        key = f"{section}.{category}"
        if not category.strip():
            raise ConfigError(f"{path}: {section}: a category name must not be empty")
        if not isinstance(patterns, list):
            raise ConfigError(
                f"{path}: {key} must be an array of patterns, got {_type_name(patterns)}"
            )
        for pattern in patterns:
            _check_type(pattern, str, key, path)
            try:
                parse_pattern(pattern)
            except ValueError as error:
                raise ConfigError(f"{path}: {key}: {error}") from None
        categories[category] = tuple(patterns)
    return categories


def _parse_file_accesses(
    document: Mapping[str, Any], file_paths: Mapping[str, Any], path: str
) -> tuple[str, ...]:
    categories = document.get("file_accesses", [])
    if not isinstance(categories, list):
        raise ConfigError(
            f"{path}: file_accesses must be an array of file_paths categories, "
            f"got {_type_name(categories)}"
        )
    for category in categories:
        _check_type(category, str, "file_accesses", path)
        if category not in file_paths:
            raise ConfigError(
                f"{path}: file_accesses: no category {category!r} in [file_paths]"
            )
    return tuple(categories)


def _parse_schedule(table: Mapping[str, Any], path: str) -> dict[str, ScheduledQuery]:
    queries = {}
    for name, entry in table.items():
        prefix = f"schedule.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{path}: {prefix} must be a table, got {_type_name(entry)}"
            )
        for key, value in entry.items():
            if key not in _QUERY_KEYS:
                allowed = ", ".join(_QUERY_KEYS)
                raise ConfigError(
                    f"{path}: unknown key {prefix}.{key}; expected {allowed}"
                )
            _check_type(value, _QUERY_KEYS[key], f"{prefix}.{key}", path)
        for key in ("query", "interval"):
            if key not in entry:
                raise ConfigError(f"{path}: {prefix}.{key} is missing")
        if entry["interval"] <= 0:
            raise ConfigError(
                f"{path}: {prefix}.interval must be a positive number of seconds, "
                f"got {entry['interval']}"
            )
        if not entry["query"].strip():
            raise ConfigError(f"{path}: {prefix}.query must not be empty")
        queries[name] = ScheduledQuery(name=name, **entry)
    return queries
