"""The one event type that every publisher produces, and the statistics record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Event", "Statistics", "Counters"]


@dataclass(frozen=True)
class Event:
    """One kernel event, already parsed.

    `source` names the publisher ("inotify"), `time` is the Unix time in seconds at
    which the publisher read it, and `fields` contains the columns it fills, named as
    in the event table.
    """

    source: str
    action: str
    time: int
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Statistics:
    """A snapshot of one publisher's or subscriber's counters.

    `dropped` counts events lost for any reason, and `drop_reasons` splits that count
    by reason ("queue_full", "overflow", "events_max", ...). `buffered` is the number
    of events waiting in a queue or held in the store.
    """

    name: str
    kind: str
    events: int = 0
    dropped: int = 0
    drop_reasons: Mapping[str, int] = field(default_factory=dict)
    overflows: int = 0
    buffered: int = 0
    expired: int = 0
    restarts: int = 0
    last_error: str = ""
    last_error_time: int = 0


@dataclass
class Counters:
    """The mutable counters behind `Statistics`, of one publisher or subscriber."""

    name: str
    kind: str
    events: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    overflows: int = 0
    buffered: int = 0
    expired: int = 0
    restarts: int = 0
    last_error: str = ""
    last_error_time: int = 0

    def drop(self, reason: str, count: int = 1) -> None:
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + count

    def error(self, message: str, now: int) -> None:
        self.last_error = message
        self.last_error_time = now

    def snapshot(self) -> Statistics:
        return Statistics(
            name=self.name,
            kind=self.kind,
            events=self.events,
            dropped=sum(self.drop_reasons.values()),
            drop_reasons=dict(self.drop_reasons),
            overflows=self.overflows,
            buffered=self.buffered,
            expired=self.expired,
            restarts=self.restarts,
            last_error=self.last_error,
            last_error_time=self.last_error_time,
        )
