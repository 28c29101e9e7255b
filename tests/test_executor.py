"""Model health and the in-thread executor: timeouts, fail-fast while stuck, recovery."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlink.operators.executor import ModelExecutor, ThreadExecutor, make_executor
from mlink.operators.health import HealthSettings, ModelHealth
from mlink.operators.model_settings import (
    ExecutorSettings,
    IsolationSettings,
    ModelFactory,
    ModelFactoryError,
)
from tests.misbehaving_models import SPEC, frames, misbehaving, parity

pytestmark = pytest.mark.timeout(60)

# -- health ------------------------------------------------------------------------------------


def test_errors_make_a_model_failing_then_unhealthy_and_successes_heal_it() -> None:
    health = ModelHealth("m", HealthSettings(unhealthy_after=3, recover_after=2))
    assert health.report().state == "healthy"
    health.failure("error", "bad output")
    assert (health.report().state, health.report().reason) == ("failing", "bad output")
    health.success()  # one success is not yet a recovery, but breaks the run of errors
    health.failure("error", "again")
    health.failure("error", "and again")
    assert health.report().state == "failing"
    health.failure("error", "third in a row")
    report = health.report()
    assert (report.state, report.reason, report.errors) == ("unhealthy", "third in a row", 4)
    health.success()
    assert health.report().state == "unhealthy"
    health.success()
    report = health.report()
    assert (report.state, report.reason, report.last_error) == ("healthy", None, "third in a row")


def test_a_timeout_or_a_crash_is_unhealthy_at_once() -> None:
    for kind in ("timeout", "crash", "unavailable"):
        health = ModelHealth("m")
        health.failure(kind, f"a {kind}")
        assert health.report().state == "unhealthy", kind
    health = ModelHealth("m")
    health.failure("timeout", "hung", count=4)
    health.restarted()
    report = health.report()
    assert (report.timeouts, report.consecutive_errors, report.restarts) == (1, 4, 1)


def test_observe_counts_one_call_frame_by_frame() -> None:
    health = ModelHealth("m", HealthSettings(unhealthy_after=2, recover_after=1))
    health.observe([None, "e1", "e2"])
    assert health.report().state == "unhealthy"
    health.observe([None])
    assert health.report().state == "healthy"
    assert (health.report().successes, health.report().errors) == (2, 2)


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="recover_after"):
        HealthSettings(recover_after=0)
    with pytest.raises(ValueError, match="timeout_s"):
        ExecutorSettings(timeout_s=0)
    with pytest.raises(ValueError, match="unsafe"):
        IsolationSettings(start_method="fork")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_rss_mb"):
        IsolationSettings(max_rss_mb=-1)


# -- factories ---------------------------------------------------------------------------------


def test_a_factory_builds_from_an_import_path_or_a_callable() -> None:
    from_path = ModelFactory("tests.misbehaving_models:misbehaving", {"fault": "none"})
    assert from_path.build()(frames(3)[0]).argmax() == 1
    assert ModelFactory(misbehaving).build()(frames(2)[0]).argmax() == 0
    assert ModelFactory.of(parity).build() is parity


def test_a_bad_factory_says_what_is_wrong() -> None:
    with pytest.raises(ModelFactoryError, match=r"must look like 'package.module:callable'"):
        ModelFactory("tests.misbehaving_models.misbehaving").build()
    with pytest.raises(ModelFactoryError, match="cannot import"):
        ModelFactory("tests.no_such_module:x").build()
    with pytest.raises(ModelFactoryError, match="returned int"):
        ModelFactory(int).build()


def test_isolation_needs_a_factory_not_a_built_model() -> None:
    settings = ExecutorSettings(isolation=IsolationSettings())
    with pytest.raises(TypeError, match="ModelFactory"):
        make_executor("m", parity, SPEC, settings=settings)


# -- the thread executor -----------------------------------------------------------------------


class Gate:
    """A model that blocks on frames valued 7 until released; parity otherwise."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.returned = threading.Event()

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if int(frame.flat[0]) == 7:
            self.release.wait(30)
            self.returned.set()
        return parity(frame)


def test_the_thread_executor_runs_the_model_and_reports_health() -> None:
    executor = make_executor("m", ModelFactory(misbehaving, {"fault": "raise", "trigger": 2}), SPEC)
    assert isinstance(executor, ThreadExecutor) and isinstance(executor, ModelExecutor)
    outcomes = executor.run(frames(1, 2, 3))
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert outcomes[1].error == "model m raised RuntimeError: cannot handle frame 2"
    assert executor.health().state == "failing"
    assert executor.run([]) == []
    executor.close()


def test_a_hung_call_times_out_and_the_model_fails_fast_until_it_returns() -> None:
    gate = Gate()
    settings = ExecutorSettings(timeout_s=0.5, health=HealthSettings(recover_after=2))
    hung = ThreadExecutor("hung", gate, SPEC, settings=settings)
    other = ThreadExecutor("other", parity, SPEC, settings=settings)

    outcomes = hung.run(frames(7, 1))  # two calls of a one-frame model: 0.5 s each
    assert [o.error for o in outcomes] == ["model hung timed out after 1.0 s"] * 2
    assert all(o.output is None and o.elapsed_ms == 1000.0 for o in outcomes)
    report = hung.health()
    assert (report.state, report.timeouts) == ("unhealthy", 1)

    assert [o.error for o in other.run(frames(1, 2))] == [None, None]  # other models unaffected
    started = time.monotonic()
    stuck = hung.run(frames(1))  # would queue behind the hung call: fails fast instead
    assert time.monotonic() - started < 0.4
    assert stuck[0].output is None and "is stuck in a call that timed out" in stuck[0].error
    assert hung.health().unavailable == 1

    gate.release.set()
    assert gate.returned.wait(10)
    time.sleep(0.05)  # the thread hands the (discarded) late result back
    assert [o.error for o in hung.run(frames(1, 2))] == [None, None]
    report = hung.health()
    assert (report.state, report.successes) == ("healthy", 2)
    hung.close()
    other.close()


def test_a_one_frame_model_has_its_time_limit_per_frame_not_per_batch() -> None:
    """Review: a model taking frames one at a time ran a worker's batch under one call's limit,
    so a model well within its per-frame limit lost every frame of a batch."""

    def slow(frame: np.ndarray) -> np.ndarray:
        time.sleep(0.2)
        return parity(frame)

    settings = ExecutorSettings(timeout_s=0.5)
    executor = ThreadExecutor("slow", slow, SPEC, settings=settings)
    outcomes = executor.run(frames(1, 2, 3, 4, 5))  # 1.0 s in all, 0.2 s a call
    assert [o.error for o in outcomes] == [None] * 5
    executor.close()


def test_one_call_over_its_limit_within_a_batch_is_a_timeout() -> None:
    """A new user's audit: a call 3 times over ``timeout_s`` came back as ``executed``, since
    the batch's limit covers every call of it; the docs promise an error output."""

    def sometimes_slow(frame: np.ndarray) -> np.ndarray:
        time.sleep(0.9 if int(frame.flat[0]) == 2 else 0.0)
        return parity(frame)

    settings = ExecutorSettings(timeout_s=0.5)
    executor = ThreadExecutor("sometimes", sometimes_slow, SPEC, settings=settings)
    try:
        outcomes = executor.run(frames(1, 2, 3))
        assert [o.error is None for o in outcomes] == [True, False, True]
        assert "timed out after 0.5 s" in str(outcomes[1].error) and outcomes[1].output is None
        assert outcomes[1].elapsed_ms >= 900
        health = executor.health()
        assert health.state == "unhealthy" and health.timeouts == 1 and health.successes == 2
        assert [o.error for o in asyncio.run(executor.arun(frames(4, 5)))] == [None, None]
    finally:
        executor.close()


def test_an_output_the_spec_chokes_on_or_a_huge_message_is_one_frames_bounded_error() -> None:
    """Review: string boxes made the spec's check raise a ValueError that escaped validation
    (and killed an isolated model's process), and a 30 MB exception message went to Kafka."""
    from mlink.operators.model_runner import MAX_ERROR_CHARS, ModelRunner
    from mlink.topics.specs import BoxesSpec

    def odd(frame: np.ndarray) -> object:
        if int(frame.flat[0]) == 7:
            return [["a", "b", "c", "d", "e"]]
        if int(frame.flat[0]) == 8:
            raise RuntimeError("x" * 1_000_000)
        return np.zeros((0, 5), np.float32)

    outcomes = ModelRunner("odd", odd, BoxesSpec(max_boxes=4)).run(frames(1, 7, 8, 2))
    assert [o.error is None for o in outcomes] == [True, False, False, True]
    assert outcomes[1].error.startswith("invalid output: ValueError")
    assert outcomes[2].error.startswith("model odd raised RuntimeError: xxx")
    assert len(outcomes[2].error) < MAX_ERROR_CHARS + 100


def test_arun_waits_without_blocking_the_event_loop() -> None:
    gate = Gate()
    executor = ThreadExecutor("hung", gate, SPEC, settings=ExecutorSettings(timeout_s=0.5))
    other = ThreadExecutor("other", parity, SPEC, settings=ExecutorSettings(timeout_s=0.5))

    async def main() -> tuple[int, list, list, list]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        hung, served = await asyncio.gather(executor.arun(frames(7)), other.arun(frames(1, 2)))
        fast = await executor.arun(frames(1))
        task.cancel()
        return ticks, hung, served, fast

    ticks, hung, served, fast = asyncio.run(main())
    assert ticks >= 5  # the loop kept turning during the 0.5 s wait
    assert hung[0].error == "model hung timed out after 0.5 s"
    assert [o.error for o in served] == [None, None]
    assert "stuck" in fast[0].error
    gate.release.set()
    executor.close()
    other.close()


def test_a_model_raising_base_exceptions_does_not_kill_its_thread() -> None:
    def exits(frame: np.ndarray) -> np.ndarray:
        if int(frame.flat[0]) == 9:
            raise SystemExit(2)
        return parity(frame)

    executor = ThreadExecutor("exits", exits, SPEC)
    assert executor.run(frames(9))[0].error == "model exits raised SystemExit: 2"
    assert executor.run(frames(1))[0].error is None
    executor.close()
