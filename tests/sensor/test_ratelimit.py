import logging

import pytest

from sensor.ratelimit import LossWarnings

logger = logging.getLogger("tests.ratelimit")


@pytest.fixture
def warnings(caplog):
    caplog.set_level(logging.WARNING, logger=logger.name)
    return LossWarnings(logger, interval=60)


def lines(caplog):
    return [record.getMessage() for record in caplog.records]


def test_first_loss_logged_at_once(warnings, caplog):
    warnings.lost("queue_full", 3, 1000.0, "%s channel full", "inotify")
    assert lines(caplog) == ["inotify channel full (reason=queue_full count=3 total=3)"]
    assert caplog.records[0].levelno == logging.WARNING


def test_losses_within_interval_counted(warnings, caplog):
    warnings.lost("queue_full", 1, 1000.0, "full")
    warnings.lost("queue_full", 5, 1010.0, "full")
    warnings.lost("queue_full", 7, 1059.0, "full")
    assert len(caplog.records) == 1

    warnings.lost("queue_full", 2, 1060.0, "full again")
    assert lines(caplog)[1] == "full again (reason=queue_full count=14 total=15)"


def test_reasons_limited_separately(warnings, caplog):
    warnings.lost("queue_full", 1, 1000.0, "full")
    warnings.lost("overflow", 1, 1001.0, "overflow")
    warnings.lost("queue_full", 1, 1002.0, "full")
    assert lines(caplog) == [
        "full (reason=queue_full count=1 total=1)",
        "overflow (reason=overflow count=1 total=1)",
    ]


def test_flush_logs_rest_of_burst(warnings, caplog):
    warnings.lost("queue_full", 1, 1000.0, "full at %s", "first")
    warnings.lost("queue_full", 48_499, 1001.0, "full at %s", "last")
    warnings.flush(1059.0)
    assert len(caplog.records) == 1

    warnings.flush(1060.0)
    expected = "full at last (reason=queue_full count=48499 total=48500)"
    assert lines(caplog)[1] == expected
    warnings.flush(2000.0)
    assert len(caplog.records) == 2


def test_flush_force_ignores_interval(warnings, caplog):
    warnings.lost("events_max", 4, 1000.0, "trimmed")
    warnings.lost("events_max", 6, 1001.0, "trimmed")
    warnings.flush(1002.0, force=True)
    assert lines(caplog)[1] == "trimmed (reason=events_max count=6 total=10)"
    warnings.flush(1003.0, force=True)
    assert len(caplog.records) == 2


def test_flush_restarts_interval(warnings, caplog):
    warnings.lost("overflow", 1, 1000.0, "lost")
    warnings.lost("overflow", 1, 1001.0, "lost")
    warnings.flush(1060.0)
    warnings.lost("overflow", 1, 1061.0, "lost")
    assert len(caplog.records) == 2
    warnings.lost("overflow", 1, 1120.0, "lost")
    assert lines(caplog)[2] == "lost (reason=overflow count=2 total=4)"


def test_percent_in_argument_kept(warnings, caplog):
    warnings.lost("watch_failed", 1, 0.0, "cannot watch %s", "/srv/100%")
    assert lines(caplog) == [
        "cannot watch /srv/100% (reason=watch_failed count=1 total=1)"
    ]


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval must be positive, not 0"):
        LossWarnings(logger, interval=0)
