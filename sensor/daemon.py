"""The daemon: event sources, the scheduler and the statistics task in one nursery."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import signal
import socket
from typing import Any

import trio

from sensor.config import Config, Options
from sensor.engine import Engine
from sensor.errors import ConfigError, PublisherError, QueryError, SensorError
from sensor.loggers import open_loggers
from sensor.scheduler import Scheduler
from sensor.store import Store

__all__ = ["serve", "host_identifier"]

log = logging.getLogger(__name__)

# Events a publisher may queue before its subscriber catches up. Past this, the
# publisher counts drops with reason "queue_full" instead of blocking the kernel reader.
EVENT_QUEUE_SIZE = 4096
# How often the daemon writes its sources' statistics where other processes see them.
STATISTICS_INTERVAL = 1.0


def host_identifier(options: Options) -> str:
    """Return the hostIdentifier of result lines, chosen as osquery's flag does."""
    if options.host_identifier == "specified":
        return options.specified_identifier
    if options.host_identifier == "uuid":
        from tables.system import host_uuid

        identifier = host_uuid()
        if identifier:
            return identifier
    return socket.gethostname()


def _event_sources(config: Config, store: Store) -> list[tuple[Any, Any]]:
    """Return (publisher, subscriber) pairs for the sources the config enables."""
    options = config.options
    if options.disable_events:
        return []
    sources = []
    if config.file_paths:
        from publishers.inotify import InotifyPublisher
        from subscribers.file_events import FileEventsSubscriber

        sources.append(
            (
                InotifyPublisher(
                    config.file_paths,
                    config.exclude_paths,
                    file_accesses=config.file_accesses,
                ),
                FileEventsSubscriber(
                    store,
                    events_expiry=options.events_expiry,
                    events_max=options.events_max,
                    read_max=options.read_max,
                ),
            )
        )
    return sources


class _Statistics:
    """Collects the statistics of every source and writes them to the store."""

    def __init__(self, store: Store):
        self.store = store
        self.components: list[Any] = []
        self.failed: dict[str, Any] = {}
        self.written: list[Any] | None = None

    def snapshots(self) -> list[Any]:
        snapshots = [component.statistics() for component in self.components]
        return snapshots + list(self.failed.values())

    def flush(self) -> None:
        # An idle daemon's counters do not change, and skipping the write then
        # keeps it from growing the database's write-ahead log every second.
        snapshots = self.snapshots()
        if snapshots != self.written:
            self.store.save_statistics(snapshots)
            self.written = snapshots

    async def run(self) -> None:
        while True:
            self.flush()
            await trio.sleep(STATISTICS_INTERVAL)


# How long subscribers may take at shutdown to store the events still queued.
DRAIN_TIMEOUT = 10.0


async def _start_sources(
    publishers: trio.Nursery,
    subscribers: trio.Nursery,
    config: Config,
    store: Store,
    statistics: _Statistics,
) -> list[trio.MemorySendChannel]:
    """Start every source; return the send channels to close at shutdown."""
    channels = []
    for publisher, subscriber in _event_sources(config, store):
        send, receive = trio.open_memory_channel(EVENT_QUEUE_SIZE)
        await subscribers.start(subscriber.run, receive)
        statistics.components.append(subscriber)
        channels.append(send)
        try:
            await publishers.start(publisher.run, send)
        except PublisherError as error:
            # One broken source must not stop the others: the error is logged and
            # shown in sensor_events, and the daemon carries on without it.
            log.error("publisher %s failed to start: %s", publisher.name, error)
            snapshot = dataclasses.replace(
                publisher.statistics(), last_error=str(error)
            )
            statistics.failed[publisher.name] = snapshot
            continue
        statistics.components.append(publisher)
        log.info("publisher %s started", publisher.name)
    return channels


async def _wait_for_signal(signals: Any) -> None:
    async for signum in signals:
        log.info("received %s, stopping", signal.Signals(signum).name)
        return


async def serve(config: Config) -> None:
    """Run the daemon until SIGINT or SIGTERM.

    Shutdown goes in order: publishers stop reading the kernel, subscribers store
    what is still queued, then the scheduler and the statistics task stop.
    """
    # trio re-sends a signal that arrived but was not read once its receiver
    # closes, using the handler that was in place before. A supervisor such as
    # timeout(1) often sends SIGTERM twice, so that handler ignores the signal,
    # and a repeat during shutdown cannot kill the daemon with status 143.
    try:
        daemon = _Daemon(config)
    except ConfigError as error:
        raise ConfigError(f"{config.path}: {error}") from None
    previous = {
        signum: signal.signal(signum, signal.SIG_IGN)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        await daemon.run()
    finally:
        daemon.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("sensor stopped")


class _Daemon:
    """The daemon's open resources and its task tree."""

    def __init__(self, config: Config):
        options = config.options
        self.config = config
        self.store = Store(options.database_path)
        self.lock_fd = _lock_database(options.database_path)
        self.engine = Engine(Store(options.database_path))
        # A query that can never run is a config error, found before the
        # daemon starts rather than logged at every interval.
        for query in config.schedule.values():
            key = f"schedule.{query.name}.query"
            try:
                statements = self.engine.check(query.query)
            except QueryError as error:
                raise ConfigError(f"{key}: {error}") from None
            if statements != 1:
                raise ConfigError(
                    f"{key}: contains {statements} statements; "
                    "a scheduled query must be exactly one"
                )
        self.loggers = open_loggers(options)
        self.statistics = _Statistics(self.store)
        self.scheduler = Scheduler(
            config, self.engine, self.loggers, host_identifier(options)
        )

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as services:
                async with trio.open_nursery() as subscribers:
                    async with trio.open_nursery() as publishers:
                        channels = await _start_sources(
                            publishers,
                            subscribers,
                            self.config,
                            self.store,
                            self.statistics,
                        )
                        services.start_soon(self.statistics.run)
                        await services.start(self.scheduler.run)
                        log.info(
                            "sensor started: scheduled queries: %d, database: %s",
                            len(self.config.schedule),
                            self.config.options.database_path,
                        )
                        await _wait_for_signal(signals)
                        publishers.cancel_scope.cancel()
                    for send in channels:
                        send.close()
                    deadline = trio.current_time() + DRAIN_TIMEOUT
                    subscribers.cancel_scope.deadline = deadline
                services.cancel_scope.cancel()
                # A worker thread cannot be cancelled, so the query it runs is
                # interrupted, or the nursery would wait for it to finish.
                self.scheduler.stop()

    def close(self) -> None:
        self.statistics.flush()
        for logger in self.loggers:
            logger.close()
        self.engine.store.close()
        self.store.close()
        # The pid file goes while the lock is still held, so no other daemon's
        # new file can be removed by mistake.
        try:
            os.unlink(self.config.options.database_path + ".pid")
        except OSError:
            pass
        os.close(self.lock_fd)


def _lock_database(database_path: str) -> int:
    """Take the lock that keeps a second daemon off this database; return its fd.

    The lock file, beside the database, contains the pid of the daemon holding it.
    The kernel releases the lock when that process ends, however it ends.
    """
    path = database_path + ".pid"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise SensorError(
            f"another sensor daemon (pid {holder}) is using database {database_path}; "
            "stop it or give this config another database_path"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
