"""The generator shared by every `*_events` table: rows read back from the store."""

from __future__ import annotations

from typing import Iterator

from sensor.schema import Generator, QueryContext, Row

__all__ = ["event_generator"]


def event_generator(subscriber: str) -> Generator:
    """Return a generator over the events that `subscriber` stored.

    A scheduled query (a context with a scope) sees only the events stored since its
    previous successful run. `time` constraints are pushed down to the store.
    """

    def generate(context: QueryContext) -> Iterator[Row]:
        store = context.store
        if store is None:
            return
        after = store.mark(context.scope, subscriber) if context.scope else 0
        newest = store.max_eid(subscriber)
        time_ranges = context.ranges("time")
        times = context.equals("time")
        if times is not None and len(times) == 1:
            time_ranges.append(("=", next(iter(times))))
        for eid, time, fields in store.select_events(
            subscriber, after, newest, time_ranges
        ):
            yield {**fields, "time": time, "eid": f"{eid:010d}"}
        if context.scope:
            context.marks[(context.scope, subscriber)] = newest

    return generate
