"""sensor_events: per publisher and subscriber, how many events were seen and lost."""

from __future__ import annotations

from typing import Iterator

from sensor.schema import BIGINT, TEXT, Column, QueryContext, Row, Table, TableSchema

__all__ = ["TABLES"]

SCHEMA = TableSchema(
    name="sensor_events",
    description=(
        "Event publishers and subscribers of the daemon that fills the database, "
        "with counts of events seen and lost."
    ),
    from_store=True,
    columns=(
        Column("name", TEXT, "Publisher or subscriber name, such as inotify"),
        Column("type", TEXT, "publisher or subscriber"),
        Column("events", BIGINT, "Events seen since the daemon started"),
        Column("dropped", BIGINT, "Events lost or dropped, for any reason"),
        Column(
            "drop_reasons",
            TEXT,
            "Dropped events by reason, as reason=count pairs separated by commas",
        ),
        Column("overflows", BIGINT, "Kernel queue overflows detected"),
        Column("buffered", BIGINT, "Events waiting in a queue or held in the store"),
        Column("expired", BIGINT, "Events removed from the store by events_expiry"),
        Column("restarts", BIGINT, "Times the source was restarted after an error"),
        Column("last_error", TEXT, "The most recent error, empty if none"),
        Column("last_error_time", BIGINT, "Unix time of the most recent error"),
    ),
)


def generate(context: QueryContext) -> Iterator[Row]:
    if context.store is None:
        return
    for snapshot in context.store.load_statistics():
        reasons = ",".join(
            f"{reason}={count}"
            for reason, count in sorted(snapshot.drop_reasons.items())
        )
        yield {
            "name": snapshot.name,
            "type": snapshot.kind,
            "events": snapshot.events,
            "dropped": snapshot.dropped,
            "drop_reasons": reasons,
            "overflows": snapshot.overflows,
            "buffered": snapshot.buffered,
            "expired": snapshot.expired,
            "restarts": snapshot.restarts,
            "last_error": snapshot.last_error,
            "last_error_time": snapshot.last_error_time,
        }


TABLES = [Table(SCHEMA, generate)]
