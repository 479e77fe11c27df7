"""The interactive shell: SQL statements ending at `;`, and osqueryi's meta-commands."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterator, TextIO

import apsw

from sensor.engine import Engine
from sensor.errors import ConfigError, QueryError
from sensor.output import MODES, render
from sensor.registry import table_names
from sensor.text import sql_text

__all__ = ["Shell"]

PROMPT = "sensor> "
CONTINUATION_PROMPT = "   ...> "
DEFAULT_HISTORY = "~/.sensor_history"

HELP = """\
Statements end with ';' and may span several lines. Meta-commands:
  .all TABLE          select all columns of a table
  .help               show this help
  .mode MODE          set the output mode: pretty, line, csv, json or list
  .quit, .exit        leave the shell
  .schema [TABLE]     show the CREATE TABLE statement of one table or all
  .tables [PATTERN]   list the tables whose name contains PATTERN
  .timer on|off       show how long each statement took"""


class Shell:
    """Reads statements and meta-commands, runs them, and prints their results."""

    def __init__(
        self,
        engine: Engine,
        *,
        history_path: str | None = None,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        prompt_input: Any = None,
        prompt_output: Any = None,
    ):
        self.engine = engine
        self.history_path = os.path.expanduser(history_path or DEFAULT_HISTORY)
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.mode = "pretty"
        self.timer = False
        self.buffer = ""
        self.errors = 0
        # prompt_toolkit Input and Output objects; given, they make the shell
        # interactive without a terminal, which is how its tests drive it.
        self.prompt_input = prompt_input
        self.prompt_output = prompt_output
        self._commands: dict[str, Callable[[str], bool]] = {
            ".all": self._all,
            ".help": self._help,
            ".mode": self._mode,
            ".quit": self._quit,
            ".exit": self._quit,
            ".schema": self._schema,
            ".tables": self._tables,
            ".timer": self._timer,
        }

    def run(self) -> int:
        """Run until `.quit` or end of input; return the exit status."""
        interactive = self.stdin.isatty() and self.stdout.isatty()
        if interactive or self.prompt_input is not None:
            self._run_interactive()
        else:
            for line in self._input_lines():
                if not self.feed(line.rstrip("\n")):
                    break
            if self.buffer.strip():
                self.feed(";")
        return 1 if self.errors and not self.stdin.isatty() else 0

    def _input_lines(self) -> Iterator[str]:
        # Piped input may contain bytes that are not UTF-8, such as a file name
        # typed raw. They become surrogates here, and the engine writes them as \xNN.
        stream = getattr(self.stdin, "buffer", None)
        if stream is None:
            yield from self.stdin
            return
        for line in stream:
            yield line.decode("utf-8", "surrogateescape")

    def _run_interactive(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        self._create_history()
        # Enter ends the input only once it is a complete statement or a
        # meta-command, so a statement typed over several lines is one history
        # entry and can be recalled and edited whole.
        session: PromptSession[str] = PromptSession(
            history=FileHistory(self.history_path),
            multiline=True,
            key_bindings=_enter_bindings(),
            prompt_continuation=CONTINUATION_PROMPT,
            input=self.prompt_input,
            output=self.prompt_output,
        )
        self.write("sensor shell: enter .help for meta-commands, .quit to leave")
        while True:
            try:
                text = session.prompt(PROMPT)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            if not self.feed_input(text):
                break

    def _create_history(self) -> None:
        # The history may contain secrets typed into queries, so only its owner
        # may read it.
        # Parent directories are not created: a mistyped --history must not
        # leave new directories behind.
        try:
            fd = os.open(
                self.history_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
            os.close(fd)
        except OSError as error:
            raise ConfigError(
                f"history file {self.history_path}: cannot open: {error.strerror}; "
                "choose another with --history FILE"
            ) from None

    def feed_input(self, text: str) -> bool:
        """Take one whole input (a statement or a meta-command); False means stop."""
        text = sql_text(text)
        if text.strip().startswith("."):
            return self._meta(text.strip())
        if text.strip():
            self.execute(text)
        return True

    def write(self, text: str) -> None:
        if text:
            self.stdout.write(text + "\n")
            self.stdout.flush()

    def error(self, message: str) -> None:
        self.errors += 1
        self.stdout.flush()
        self.stderr.write(f"Error: {message}\n")
        self.stderr.flush()

    def feed(self, line: str) -> bool:
        """Take one line of input; return False when the shell should stop."""
        line = sql_text(line)
        stripped = line.strip()
        if not self.buffer and stripped.startswith("."):
            return self._meta(stripped)
        self.buffer += line + "\n"
        if not apsw.complete(self.buffer):
            return True
        sql, self.buffer = self.buffer, ""
        self.execute(sql)
        return True

    def execute(self, sql: str) -> None:
        started = time.perf_counter()
        try:
            results = self.engine.execute_all(sql)
        except QueryError as error:
            self.error(str(error))
            return
        except KeyboardInterrupt:
            self.error("interrupted")
            return
        for result in results:
            self.write(render(result.columns, result.rows, self.mode))
        if self.timer:
            self.write(f"Run Time: real {time.perf_counter() - started:.3f} s")

    def _meta(self, line: str) -> bool:
        command, _, argument = line.partition(" ")
        handler = self._commands.get(command)
        if handler is None:
            self.error(f"unknown command {command}; enter .help for the list")
            return True
        return handler(argument.strip())

    def _all(self, argument: str) -> bool:
        if not argument:
            self.error("missing table name; usage: .all TABLE")
        elif argument not in table_names():
            self.error(f"no such table: {argument}; usage: .all TABLE")
        else:
            self.execute(f"SELECT * FROM {argument};")
        return True

    def _help(self, argument: str) -> bool:
        self.write(HELP)
        return True

    def _mode(self, argument: str) -> bool:
        if not argument:
            self.write(f"current output mode: {self.mode}")
        elif argument not in MODES:
            self.error(f"invalid mode {argument!r}; expected one of {', '.join(MODES)}")
        else:
            self.mode = argument
        return True

    def _quit(self, argument: str) -> bool:
        return False

    def _schema(self, argument: str) -> bool:
        names = [argument] if argument else table_names()
        for name in names:
            try:
                schema = self.engine.schema(name)
            except QueryError as error:
                self.error(str(error))
                return True
            self.write(schema.create_statement() + ";")
        return True

    def _tables(self, argument: str) -> bool:
        for name in table_names():
            if argument in name:
                self.write(f"  => {name}")
        return True

    def _timer(self, argument: str) -> bool:
        if not argument:
            self.write(f"timer is {'on' if self.timer else 'off'}")
        elif argument not in ("on", "off"):
            self.error(f"invalid argument {argument!r}; usage: .timer on|off")
        else:
            self.timer = argument == "on"
        return True


def _enter_bindings() -> Any:
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("enter")
    def _accept_when_complete(event: Any) -> None:
        buffer = event.current_buffer
        text = buffer.text.strip()
        if not text or text.startswith(".") or apsw.complete(sql_text(text)):
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n")

    return bindings
