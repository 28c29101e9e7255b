"""A broker outage's client errors are said once a while, with how many were held back; MLink's
own lines and a record's other handlers are untouched (no broker: a fake clock)."""

from __future__ import annotations

import logging

from mlink.operators.log_limits import RepeatLimiter


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_flood_of_one_client_error_passes_once_per_interval_with_a_count() -> None:
    now = [0.0]
    limiter = RepeatLimiter(every_s=30.0, clock=lambda: now[0])
    passed = []
    for second in range(0, 90):  # 108 lines a second, as a worker whose broker went away
        now[0] = float(second)
        for node in range(108):
            r = record("aiokafka.conn", "Unable connect to node with id %s: %s", node, "refused")
            if limiter.filter(r) and limiter.filter(r):  # two handlers see the same record
                passed.append(r.getMessage())
    assert len(passed) == 3  # at 0, 30 and 60 s
    assert passed[0] == "Unable connect to node with id 0: refused"
    assert passed[1].endswith(f"({30 * 108 - 1} more lines like it in the last 30 s)")


def test_other_kinds_and_mlinks_own_lines_are_not_held_back() -> None:
    limiter = RepeatLimiter(clock=lambda: 0.0)
    assert limiter.filter(record("aiokafka.cluster", "Unable to update metadata from %s", 1))
    assert limiter.filter(record("aiokafka.conn", "Connect call failed %s", 1))  # another kind
    assert not limiter.filter(record("aiokafka.cluster", "Unable to update metadata from %s", 2))
    for _ in range(3):
        assert limiter.filter(record("mlink.control", "controller keeps the current plan"))
        assert limiter.filter(record("aiokafka.conn", "connected", level=logging.INFO))
    assert limiter.filter(record("kafkaesque", "not a client logger"))


def test_a_broken_models_failures_pass_once_per_interval_each_model_on_its_own() -> None:
    """A model broken for good logged a line per batch (170 lines for 80 frames, stop 45)."""
    now = [0.0]
    limiter = RepeatLimiter(clock=lambda: now[0])
    line = "model %s failed on %d of the %d frames of a call: %s"
    assert limiter.filter(record("mlink.model_failures.nanny", line, "nanny"))
    assert not limiter.filter(record("mlink.model_failures.nanny", line, "nanny"))
    assert limiter.filter(record("mlink.model_failures.shape3", line, "shape3"))  # its own
    now[0] = 31.0
    assert limiter.filter(record("mlink.model_failures.nanny", line, "nanny"))
