"""RepeatedLog: a repeated error is logged once, then counted, with an injected clock."""

from __future__ import annotations

import logging

import pytest

from coserve._log import RepeatedLog, log_repeated


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def repeated(clock: Clock) -> RepeatedLog:
    return RepeatedLog(logging.getLogger("test.repeated"), interval=10.0, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "test.repeated"]


def test_the_first_occurrence_is_logged_at_once(
    repeated: RepeatedLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A key's first occurrence goes out at once, at its level, formatted as logging would."""
    with caplog.at_level(logging.INFO):
        assert repeated.log(logging.ERROR, "boom", "message %r failed: %s", 7, "no") is True
    assert lines(caplog) == ["message 7 failed: no"]
    assert caplog.records[0].levelno == logging.ERROR


def test_repeats_within_the_interval_are_counted_not_logged(
    repeated: RepeatedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Repeats inside the interval write nothing; the next one after it carries their count."""
    with caplog.at_level(logging.INFO):
        repeated.log(logging.ERROR, "boom", "failed %d", 0)
        for i in range(1, 61_982):
            clock.now += 0.0001
            assert repeated.log(logging.ERROR, "boom", "failed %d", i) is False
        assert lines(caplog) == ["failed 0"]
        clock.now = 1010.0
        assert repeated.log(logging.ERROR, "boom", "failed %d", 61_982) is True
    assert lines(caplog) == [
        "failed 0",
        "failed 61982 (and 61,981 more like it in the last 10 s)",
    ]


def test_a_key_quiet_for_the_interval_is_logged_plainly_again(
    repeated: RepeatedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """With no repeats in between, the next occurrence after the interval has no count."""
    with caplog.at_level(logging.INFO):
        repeated.log(logging.ERROR, "boom", "failed")
        clock.now += 10.0
        repeated.log(logging.ERROR, "boom", "failed")
    assert lines(caplog) == ["failed", "failed"]


def test_distinct_keys_are_logged_and_counted_separately(
    repeated: RepeatedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each key has its own first line and its own count."""
    with caplog.at_level(logging.INFO):
        for key in ("a", "b", "a", "b", "a"):
            repeated.log(logging.WARNING, key, "event %s", key)
        clock.now += 11.0
        repeated.log(logging.WARNING, "a", "event %s", "a")
        repeated.log(logging.WARNING, "b", "event %s", "b")
    assert lines(caplog) == [
        "event a",
        "event b",
        "event a (and 2 more like it in the last 11 s)",
        "event b (and 1 more like it in the last 11 s)",
    ]


def test_flush_writes_the_pending_counts_and_accounts_for_every_occurrence(
    repeated: RepeatedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Flushing logs each key's latest repeat with the others counted; then nothing is left."""
    with caplog.at_level(logging.INFO):
        for i in range(5):
            repeated.log(logging.ERROR, "boom", "failed %d", i)
        repeated.log(logging.ERROR, "once", "alone")
        repeated.log(logging.ERROR, "twice", "pair %d", 1)
        repeated.log(logging.ERROR, "twice", "pair %d", 2)
        clock.now += 2.5
        assert repeated.flush() == 2
        assert repeated.flush() == 0
    assert lines(caplog) == [
        "failed 0",
        "alone",
        "pair 1",
        "failed 4 (and 3 more like it in the last 2.5 s)",
        "pair 2",
    ]


def test_memory_is_bounded_by_max_keys(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A new key beyond max_keys flushes the pending counts and forgets the old keys."""
    repeated = RepeatedLog(
        logging.getLogger("test.repeated"), interval=10.0, clock=clock, max_keys=2
    )
    with caplog.at_level(logging.INFO):
        repeated.log(logging.ERROR, 1, "one")
        repeated.log(logging.ERROR, 1, "one")
        repeated.log(logging.ERROR, 2, "two")
        repeated.log(logging.ERROR, 3, "three")  # over the bound: flush, forget 1 and 2
        repeated.log(logging.ERROR, 1, "one")  # a first occurrence again
    assert lines(caplog) == ["one", "two", "one", "three", "one"]


def test_a_percent_in_the_rendered_message_stays_literal(
    repeated: RepeatedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Arguments are rendered once: a '%' they contain is not taken for a format."""
    with caplog.at_level(logging.INFO):
        repeated.log(logging.ERROR, "k", "got %s", "100%s")
        repeated.log(logging.ERROR, "k", "got %(what)s", {"what": "50%d"})
        clock.now += 10.0
        repeated.log(logging.ERROR, "k", "got %(what)s", {"what": "50%d"})
    assert lines(caplog) == ["got 100%s", "got 50%d (and 1 more like it in the last 10 s)"]


def test_log_repeated_shares_one_repeated_log_per_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The module-level helper logs a key's first occurrence and counts its quick repeats."""
    logger = logging.getLogger("test.repeated")
    key = ("test_log_repeated", id(caplog))  # unique: the helper's state is process-wide
    with caplog.at_level(logging.INFO):
        assert log_repeated(logger, logging.ERROR, key, "shared %d", 1) is True
        assert log_repeated(logger, logging.ERROR, key, "shared %d", 2) is False
    assert lines(caplog) == ["shared 1"]
