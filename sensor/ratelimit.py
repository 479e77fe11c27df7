"""Rate-limited WARNING lines for lost events, one series per drop reason.

A burst of losses must not flood the log, and it must not go unlogged either. So the
first loss of a reason is logged at once, later ones are only counted until
`interval` seconds have passed, and the next line states how many were lost since
the previous one and in total. A burst that ends inside the interval is logged by
`flush`, which the owner calls periodically and when it stops.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

__all__ = ["LossWarnings"]

# Default seconds between two warnings for the same reason.
INTERVAL = 60.0


@dataclass
class _Series:
    """The losses of one reason: counts, the time of the last warning, and the
    message of the latest loss, which a flushed line repeats."""

    total: int = 0
    unlogged: int = 0
    logged_at: float | None = None
    message: str = ""
    args: tuple[object, ...] = field(default_factory=tuple)


class LossWarnings:
    """Logs lost events as WARNINGs, at most one per reason per `interval` seconds.

    Every line has the form `<message> (reason=<reason> count=<n> total=<m>)`, where
    `count` is the number lost since the previous line for that reason. Time is
    passed in as `now` (seconds, from any monotonic or wall clock), so tests can
    drive it. `message` is a %-format string for `args`, so a path that contains
    `%` belongs in `args`. Methods may be called from several threads.
    """

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL):
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self._logger = logger
        self._interval = interval
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()

    def lost(
        self, reason: str, count: int, now: float, message: str, *args: object
    ) -> None:
        """Count `count` events lost for `reason`, and log `message % args` with the
        counts unless a warning for `reason` was logged less than `interval` ago."""
        with self._lock:
            series = self._series.setdefault(reason, _Series())
            series.total += count
            series.unlogged += count
            series.message, series.args = message, args
            if series.logged_at is None or now - series.logged_at >= self._interval:
                self._log(reason, series, now)

    def flush(self, now: float, *, force: bool = False) -> None:
        """Log the losses not logged yet, for each reason whose interval has passed,
        or for every reason when `force` is true."""
        with self._lock:
            for reason, series in self._series.items():
                if not series.unlogged:
                    continue
                assert series.logged_at is not None  # The first loss is logged at once.
                if force or now - series.logged_at >= self._interval:
                    self._log(reason, series, now)

    def _log(self, reason: str, series: _Series, now: float) -> None:
        self._logger.warning(
            series.message + " (reason=%s count=%d total=%d)",
            *series.args,
            reason,
            series.unlogged,
            series.total,
        )
        series.logged_at = now
        series.unlogged = 0
