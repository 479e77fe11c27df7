"""The daemon: event sources, the scheduler and the statistics flusher in one nursery."""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
from typing import Any

import trio

from sensor.config import Config, Options
from sensor.engine import Engine
from sensor.errors import PublisherError
from sensor.loggers import open_loggers
from sensor.scheduler import Scheduler
from sensor.store import Store

__all__ = ["serve", "host_identifier"]

log = logging.getLogger(__name__)

# Events a publisher may hand over before its subscriber catches up; past this the
# publisher counts drops with reason "queue_full" instead of blocking the kernel reader.
EVENT_QUEUE_SIZE = 4096
# How often the daemon writes its sources' statistics where other processes see them.
STATISTICS_INTERVAL = 1.0

_UUID_FILES = ("/sys/class/dmi/id/product_uuid", "/etc/machine-id")


def host_identifier(options: Options) -> str:
    """Return the hostIdentifier of result lines, chosen as osquery's flag does."""
    if options.host_identifier == "specified":
        return options.specified_identifier
    if options.host_identifier == "uuid":
        for path in _UUID_FILES:
            try:
                with open(path) as stream:
                    value = stream.read().strip()
            except OSError:
                continue
            if value:
                return value
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
                InotifyPublisher(config.file_paths, config.exclude_paths),
                FileEventsSubscriber(
                    store,
                    events_expiry=options.events_expiry,
                    events_max=options.events_max,
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

    def snapshots(self) -> list[Any]:
        snapshots = [component.statistics() for component in self.components]
        return snapshots + list(self.failed.values())

    def flush(self) -> None:
        self.store.save_statistics(self.snapshots())

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
            snapshot = dataclasses.replace(publisher.statistics(), last_error=str(error))
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
    options = config.options
    store = Store(options.database_path)
    engine = Engine(Store(options.database_path))
    loggers = open_loggers(options)
    statistics = _Statistics(store)
    scheduler = Scheduler(config, engine, loggers, host_identifier(options))

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as services:
            async with trio.open_nursery() as subscribers:
                async with trio.open_nursery() as publishers:
                    channels = await _start_sources(
                        publishers, subscribers, config, store, statistics
                    )
                    services.start_soon(statistics.run)
                    await services.start(scheduler.run)
                    log.info(
                        "sensor started: %d scheduled queries, database %s",
                        len(config.schedule),
                        options.database_path,
                    )
                    await _wait_for_signal(signals)
                    publishers.cancel_scope.cancel()
                for send in channels:
                    send.close()
                subscribers.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT
            services.cancel_scope.cancel()

    statistics.flush()
    for logger in loggers:
        logger.close()
    engine.store.close()
    store.close()
    log.info("sensor stopped")
