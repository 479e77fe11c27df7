"""The `sensor` command: `run` starts the daemon, `query` and `shell` ask questions."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from sensor import __version__
from sensor.errors import ConfigError, SensorError

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser; the help of `query` lists every table's declaration."""

    def format_help(self) -> str:
        text = super().format_help()
        if self.prog.endswith(" query"):
            text += "\n" + tables_help()
        return text


def tables_help() -> str:
    from sensor.registry import load_table, table_names

    lines = ["tables:"]
    for name in table_names():
        schema = load_table(name).schema
        visible = [column.name for column in schema.columns if not column.hidden]
        lines.append(f"  {name}: {schema.description}")
        lines.append(f"    columns: {', '.join(visible)}")
        required = schema.required_columns
        if required:
            lines.append(f"    requires: {' or '.join(required)} (=, IN or LIKE)")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensor",
        description="Ask a Linux host questions in SQL and stream its kernel events.",
    )
    parser.add_argument("--version", action="version", version=f"sensor {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )

    run = commands.add_parser(
        "run",
        help="start the daemon on a config file",
        description="Start the daemon: watch files, run the scheduled queries and "
        "log their results. SIGINT or SIGTERM stops it.",
    )
    run.add_argument("--config", required=True, help="path of the TOML config file")
    run.add_argument("--verbose", action="store_true", help="log debug messages")

    query = commands.add_parser(
        "query",
        help="run one SQL statement and print its result",
    )
    query.add_argument("sql", help="the SQL to run")
    query.add_argument(
        "--config",
        help="config file whose database contains the daemon's *_events tables",
    )
    formats = query.add_mutually_exclusive_group()
    for mode in ("pretty", "json", "csv", "line", "list"):
        formats.add_argument(
            f"--{mode}",
            dest="mode",
            action="store_const",
            const=mode,
            help=f"print the result in {mode} mode",
        )
    query.set_defaults(mode="pretty")  # the default when no mode flag is given

    shell = commands.add_parser("shell", help="interactive SQL shell")
    shell.add_argument(
        "--config",
        help="config file whose database contains the daemon's *_events tables",
    )
    shell.add_argument(
        "--history",
        help="history file (default: ~/.sensor_history)",
    )
    return parser


def _open_engine(config_path: str | None):
    from sensor.engine import Engine

    if config_path is None:
        return Engine()
    from sensor.config import load_config
    from sensor.store import Store

    config = load_config(config_path)
    try:
        store = Store(config.options.database_path, create=False)
    except ConfigError as error:
        raise ConfigError(f"{config.path}: {error}") from None
    return Engine(store)


def _query(arguments: argparse.Namespace) -> int:
    from sensor.output import render

    engine = _open_engine(arguments.config)
    results = engine.execute_all(arguments.sql)
    for result in results:
        text = render(result.columns, result.rows, arguments.mode)
        if text:
            print(text)
    if engine.store is None and engine.reads_store(results[-1]):
        print(
            "sensor: note: *_events and sensor_events tables are empty without "
            "--config; pass the daemon's config file to read what it collected",
            file=sys.stderr,
        )
    return 0


def _run(arguments: argparse.Namespace) -> int:
    import trio

    from sensor.config import load_config
    from sensor.daemon import serve

    level = logging.DEBUG if arguments.verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    config = load_config(arguments.config)
    trio.run(serve, config)
    return 0


def _shell(arguments: argparse.Namespace) -> int:
    from sensor.shell import Shell

    engine = _open_engine(arguments.config)
    return Shell(engine, history_path=arguments.history).run()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sensor: %(message)s")
    handlers = {"run": _run, "query": _query, "shell": _shell}
    try:
        return handlers[arguments.command](arguments)
    except ConfigError as error:
        print(f"sensor: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SensorError as error:
        print(f"sensor: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
