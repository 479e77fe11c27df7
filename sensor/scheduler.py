"""The scheduler: runs `[schedule]` queries on their interval and logs differences.

SQL runs in a worker thread, one statement at a time, so kernel sources keep draining
while a slow query runs. A run's rows, its event marks and its counter are stored after
its lines reach every logger, so a crash between the two repeats lines instead of
losing them.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import trio

from sensor.config import Config, ScheduledQuery
from sensor.engine import Engine
from sensor.errors import QueryError
from sensor.loggers import ResultLogger
from sensor.results import Diff, diff_rows, format_rows, format_snapshot

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

# Seconds between two log lines for a scheduled query that keeps failing alike.
FAILURE_LOG_INTERVAL = 300.0


class Scheduler:
    """Runs every scheduled query of a config in its own trio task."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        loggers: Sequence[ResultLogger],
        host_identifier: str,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.engine = engine
        self.loggers = list(loggers)
        self.host_identifier = host_identifier
        self.clock = clock
        self.executions: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._limiter = trio.CapacityLimiter(1)
        self.stopping = False
        self._failure_logged: dict[str, tuple[float, str]] = {}
        self._failures_unlogged: dict[str, int] = {}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for query in self.config.schedule.values():
                nursery.start_soon(self._run_every, query)
            task_status.started()

    async def _run_every(self, query: ScheduledQuery) -> None:
        while True:
            started = self.clock()
            await self.run_once(query)
            self._warn_if_late(query, self.clock() - started)
            await trio.sleep(query.interval)

    def _warn_if_late(self, query: ScheduledQuery, seconds: float) -> None:
        # Queries run one at a time, so a run that outlasts its interval also
        # delays every other scheduled query.
        if seconds > query.interval:
            log.warning(
                "scheduled query %s took %.1f s, longer than its interval of %d s;"
                " other scheduled queries waited meanwhile",
                query.name,
                seconds,
                query.interval,
            )

    async def run_once(self, query: ScheduledQuery) -> list[str]:
        """Run one query now, log what changed, and return the lines logged."""
        try:
            return await trio.to_thread.run_sync(
                self.execute, query, limiter=self._limiter
            )
        except QueryError as error:
            if self.stopping:
                log.info("scheduled query %s stopped by shutdown", query.name)
            else:
                self._log_failure(query, str(error))
            return []

    def stop(self) -> None:
        """Abort the running query, if any, so that shutdown does not wait for it."""
        self.stopping = True
        self.engine.stop()

    def _log_failure(self, query: ScheduledQuery, message: str) -> None:
        # A query that keeps failing logs its first failure, then one line per
        # FAILURE_LOG_INTERVAL or whenever its error changes, with the count.
        self.failures[query.name] = self.failures.get(query.name, 0) + 1
        now = self.clock()
        last = self._failure_logged.get(query.name)
        unlogged = self._failures_unlogged.get(query.name, 0) + 1
        if (
            last is not None
            and last[1] == message
            and now - last[0] < FAILURE_LOG_INTERVAL
        ):
            self._failures_unlogged[query.name] = unlogged
            return
        log.error(
            "scheduled query %s failed: %s (count=%d total=%d)",
            query.name,
            message,
            unlogged,
            self.failures[query.name],
        )
        self._failure_logged[query.name] = (now, message)
        self._failures_unlogged[query.name] = 0

    def execute(self, query: ScheduledQuery) -> list[str]:
        """Run a query, write its result lines, then store its state (blocking)."""
        store = self.engine.store
        result = self.engine.execute(query.query, scope=query.name)
        rows = result.dicts()
        event_based = self.engine.is_event_based(result)

        previous = store.previous_results(query.name) if store is not None else None
        if previous is not None and previous[0] == query.query:
            counter = previous[1] + 1
            previous_rows = previous[2]
        else:
            # A new query, or one whose SQL changed, starts over with every row added.
            counter = 0
            previous_rows = []

        lines = self._format(query, rows, previous_rows, counter, event_based)
        for logger in self.loggers:
            logger.write(lines, snapshot=query.snapshot)

        if store is not None:
            # Event queries see each event once, so their rows are never diffed.
            kept = [] if event_based else rows
            store.save_results(query.name, query.query, counter, kept, result.marks)
        self.executions[query.name] = self.executions.get(query.name, 0) + 1
        return lines

    def _format(
        self,
        query: ScheduledQuery,
        rows: list[dict],
        previous_rows: list[dict],
        counter: int,
        event_based: bool,
    ) -> list[str]:
        options = self.config.options
        header = dict(
            host=self.host_identifier,
            unix_time=int(self.clock()),
            epoch=options.schedule_epoch,
            counter=counter,
            numerics=options.log_numerics_as_numbers,
        )
        if query.snapshot:
            return [format_snapshot(query.name, rows, **header)]
        if event_based:
            diff = Diff(added=rows, removed=[])
        else:
            diff = diff_rows(previous_rows, rows)
            if not query.removed:
                diff = Diff(added=diff.added, removed=[])
        return format_rows(query.name, diff, **header)
