"""Models in child processes: a segfault, a leak or a hang restarts the model's process, the
worker (this test process) survives, restarts back off, and no child outlives its parent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from mlink.operators.child_supervisor import restart_delay
from mlink.operators.executor import make_executor
from mlink.operators.health import HealthSettings
from mlink.operators.isolation import ModelStartError, ProcessExecutor
from mlink.operators.model_process import (
    SHARED_MIN_BYTES,
    FrameBuffer,
    decode_frames,
    encode_frames,
    rss_mb,
)
from mlink.operators.model_settings import ExecutorSettings, IsolationSettings, ModelFactory
from mlink.operators.runtime import MLink
from mlink.operators.settings import LinkSettings, Model, Settings
from mlink.topics.specs import VectorSpec
from tests.misbehaving_models import LEAK_MB, SPEC, frames
from tests.procs import alive, wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parent.parent
FAST_BACKOFF = {"backoff_initial_s": 0.2, "backoff_max_s": 1.0}


Isolate = Callable[..., ProcessExecutor]


@pytest.fixture
def isolated() -> Iterator[Isolate]:
    """``isolated(fault, trigger=7, timeout_s=10, health=None, hang_s=None, **isolation)``: a
    started executor of a misbehaving model; all are closed after the test, which then checks
    that none of their children is left."""
    made: list[ProcessExecutor] = []

    def make(
        fault: str,
        trigger: int | None = 7,
        timeout_s: float = 10.0,
        health: HealthSettings | None = None,
        hang_s: float | None = None,
        **isolation: object,
    ) -> ProcessExecutor:
        factory = ModelFactory(
            "tests.misbehaving_models:misbehaving",
            {"fault": fault, "trigger": trigger, "hang_s": hang_s},
        )
        settings = ExecutorSettings(
            timeout_s=timeout_s,
            health=health or HealthSettings(),
            isolation=IsolationSettings(**{**FAST_BACKOFF, **isolation}),  # type: ignore[arg-type]
        )
        executor = ProcessExecutor(f"{fault}_model", factory, SPEC, settings=settings)
        made.append(executor)
        return executor.start()

    yield make
    pids = {s.pid for executor in made for s in executor._slots if s.pid is not None}
    for executor in made:
        executor.close()
    assert not [pid for pid in pids if alive(pid)], "children left after close()"


def parity_of(outcomes: list) -> list[int | None]:
    return [None if o.output is None else int(np.argmax(o.output)) for o in outcomes]


# -- the wire ----------------------------------------------------------------------------------


def test_frames_round_trip_through_out_of_band_buffers() -> None:
    rgb = np.arange(720 * 1280 * 3, dtype=np.uint32).astype(np.uint8).reshape(720, 1280, 3)
    sample = [
        rgb,
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        rgb[::2, ::3],  # not contiguous: made contiguous, then out of band too
        np.zeros((0, 5), np.float32),
        np.full((8, 8), 3, np.uint8),
    ]
    head, buffers = encode_frames(sample)
    assert len(head) < 2000 < sum(b.nbytes for b in buffers)  # pixels are out of band
    received = decode_frames(head, [bytearray(b) for b in buffers])
    for sent, got in zip(sample, received, strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
    assert received[0].flags.writeable  # a model may write into its frame


def test_the_shared_buffer_grows_and_hands_out_private_copies() -> None:
    parent = FrameBuffer.create()
    assert parent is not None
    child = FrameBuffer(os.dup(parent.fd))  # what the child gets through its start arguments
    try:
        small = [memoryview(b"abc"), memoryview(bytes(range(100)))]
        spans = parent.write(small)
        assert spans == [(0, 3), (64, 100)]
        copies = child.read(spans)
        assert [bytes(c) for c in copies] == [b"abc", bytes(range(100))]
        copies[0][:] = b"xyz"  # private: the next call cannot change what a model kept
        big = np.arange(3 * SHARED_MIN_BYTES, dtype=np.uint8)
        (span,) = parent.write([memoryview(big)])
        assert parent.size >= big.nbytes
        np.testing.assert_array_equal(np.frombuffer(child.read([span])[0], np.uint8), big)
        assert bytes(copies[0]) == b"xyz"
    finally:
        parent.close()
        child.close()


def test_restart_delay_doubles_up_to_the_cap() -> None:
    iso = IsolationSettings(backoff_initial_s=0.5, backoff_max_s=4.0)
    assert [restart_delay(n, iso) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert restart_delay(10_000, iso) == 4.0


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["segfault", "sigsegv"])
def test_a_segfault_costs_a_restart_of_the_model_not_the_worker(
    isolated: Isolate, fault: str
) -> None:
    executor = isolated(fault, health=HealthSettings(recover_after=2))
    assert parity_of(executor.run(frames(1, 2))) == [1, 0]
    (first,) = executor.pids()

    crashed = executor.run(frames(7, 1))
    assert all(o.output is None for o in crashed)
    assert "died with SIGSEGV" in crashed[0].error and "restarting" in crashed[0].error
    assert executor.health().state == "unhealthy" and executor.health().crashes == 1
    assert not alive(first)

    during_backoff = executor.run(frames(1))  # fails fast: never waits for a model build
    assert "unavailable" in during_backoff[0].error and "SIGSEGV" in during_backoff[0].error

    assert wait_until(lambda: executor.health().restarts == 1)
    assert parity_of(executor.run(frames(3))) == [1]
    assert parity_of(executor.run(frames(4))) == [0]
    report = executor.health()
    assert (report.state, report.restarts) == ("healthy", 1)
    assert executor.pids() != [first]


def test_a_hung_call_is_killed_at_its_timeout_and_later_calls_are_served(
    isolated: Isolate,
) -> None:
    executor = isolated("hang", timeout_s=1.0)
    (first,) = executor.pids()
    started = time.monotonic()
    outcomes = executor.run(frames(7))
    assert time.monotonic() - started < 8.0
    assert outcomes[0].error == "model hang_model timed out after 1.0 s"
    assert outcomes[0].elapsed_ms == 1000.0
    assert not alive(first)
    report = executor.health()
    assert (report.state, report.timeouts) == ("unhealthy", 1)
    assert wait_until(lambda: executor.health().restarts == 1)
    assert parity_of(executor.run(frames(1, 2))) == [1, 0]


def test_a_leaking_model_is_restarted_at_its_memory_cap(isolated: Isolate) -> None:
    worker_rss = rss_mb(os.getpid())
    probe = isolated("leak", trigger=None)  # a child's memory after one call sets the cap
    probe.run(frames(1))
    (probe_pid,) = probe.pids()
    cap = round(rss_mb(probe_pid) + 2.5 * LEAK_MB)
    probe.close()
    executor = isolated("leak", trigger=None, max_rss_mb=cap)
    (first,) = executor.pids()
    served = 0
    for _ in range(12):
        outcomes = executor.run(frames(1))
        served += outcomes[0].error is None
        if executor.health().crashes:
            break
    report = executor.health()
    assert report.crashes == 1 and f"over the {cap} MB cap" in report.last_error
    assert served >= 2  # every call before the cap got its output
    assert not alive(first)
    assert wait_until(lambda: executor.health().restarts == 1)
    assert parity_of(executor.run(frames(1))) == [1]
    assert rss_mb(os.getpid()) < worker_rss + LEAK_MB  # the leak never reached the worker


def test_the_parent_kills_a_child_whose_memory_grows_during_a_call(
    isolated: Isolate,
) -> None:
    """The parent's RSS poll catches growth inside a call that would never return."""

    executor = isolated("grow", trigger=None, timeout_s=30.0, max_rss_mb=150)
    (first,) = executor.pids()
    started = time.monotonic()
    outcomes = executor.run(frames(1))
    assert time.monotonic() - started < 20.0  # killed by the poll, long before the timeout
    assert "over the 150 MB cap" in outcomes[0].error
    assert not alive(first)


def test_large_frames_and_batches_reach_the_child_intact(isolated: Isolate) -> None:
    executor = isolated("none", trigger=None)
    for values in ((3,), (2, 5, 8, 1, 4, 7, 6, 9)):
        big = frames(*values, shape=(720, 1280, 3))  # through the shared buffer
        assert parity_of(executor.run(big)) == [v % 2 for v in values]
    assert parity_of(executor.run(frames(1, 2))) == [1, 0]  # small: through the socket


def test_raising_and_garbage_models_give_error_outcomes_like_in_thread(
    isolated: Isolate,
) -> None:
    raising = isolated("raise", trigger=2)
    outcomes = raising.run(frames(1, 2))
    assert outcomes[0].error is None
    assert outcomes[1].error == "model raise_model raised RuntimeError: cannot handle frame 2"
    garbage = isolated("garbage", trigger=None)
    assert garbage.run(frames(1))[0].error.startswith("invalid output: garbage_model:")
    assert raising.health().restarts == garbage.health().restarts == 0  # nothing restarted


def test_restarts_back_off_while_a_model_keeps_crashing(
    isolated: Isolate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mlink.models")
    executor = isolated("exit", trigger=None, backoff_initial_s=0.3, backoff_max_s=1.0)
    for restarts in range(4):
        assert wait_until(lambda r=restarts: executor.health().restarts == r and executor.pids())
        assert "exited with code 3" in executor.run(frames(1))[0].error
    delays = [r.getMessage().rsplit("restart in ", 1)[1] for r in caplog.records]
    assert delays == ["0.3 s", "0.6 s", "1.0 s", "1.0 s"]
    assert executor.health().crashes == 4


def test_a_child_that_served_long_enough_restarts_without_backoff(
    isolated: Isolate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mlink.models")
    executor = isolated("exit", trigger=7, backoff_initial_s=0.3, backoff_reset_s=1.0)
    for restarts in range(3):
        assert wait_until(lambda r=restarts: executor.health().restarts == r and executor.pids())
        if restarts == 2:
            time.sleep(1.5)  # this child serves past backoff_reset_s before it crashes
        assert executor.run(frames(1))[0].error is None
        assert "exited with code 3" in executor.run(frames(7))[0].error
    delays = [r.getMessage().rsplit("restart in ", 1)[1] for r in caplog.records]
    assert delays == ["0.3 s", "0.6 s", "0.3 s"]


def test_an_isolated_models_libraries_get_the_workers_threads() -> None:
    """Priced by the CPU time of its child's calling thread, like a model on a thread of the
    worker, so OpenCV and torch must not hand its work to pools of their own."""
    counts = VectorSpec(2, "linear")
    factory = ModelFactory("tests.misbehaving_models:library_threads")

    def reported(**isolation: object) -> list[int]:
        settings = ExecutorSettings(isolation=IsolationSettings(**isolation))  # type: ignore[arg-type]
        with ProcessExecutor("threads", factory, counts, settings=settings).start() as executor:
            return [int(x) for x in executor.run(frames(1))[0].output]

    assert reported() == [1, 1]  # the default, as workers' runtime.model_threads
    assert reported(library_threads=2, torch_threads=3) == [2, 3]  # explicit torch wins
    fresh = subprocess.run(
        [sys.executable, "-c", "import cv2; print(cv2.getNumThreads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert reported(library_threads=None)[0] == int(fresh.stdout)  # OpenCV's own default


def test_a_worker_hands_its_model_threads_to_its_isolated_models(tmp_path) -> None:
    counts = VectorSpec(2, "linear")
    for threads in (None, 2):
        settings = Settings(
            name="t",
            budget={"fraction": 1},
            links=LinkSettings(store=str(tmp_path)),
            model_threads=threads,
        )
        model = Model(
            name="threads",
            spec=counts,
            build=ModelFactory("tests.misbehaving_models:library_threads"),
            isolation=IsolationSettings(library_threads=1),
        )
        mlink = MLink(settings, [model, Model(name="other", spec=counts, fn=lambda f: [0, 0])])
        try:
            asyncio.run(mlink.build_models())
            runner = mlink.runners["threads"]
            assert runner.settings.isolation.library_threads == threads  # the worker's, not 1
        finally:
            mlink.close()


def test_a_model_that_cannot_be_built_fails_at_start() -> None:
    settings = ExecutorSettings(isolation=IsolationSettings(**FAST_BACKOFF))
    broken = ModelFactory("tests.misbehaving_models:broken_factory")
    with pytest.raises(ModelStartError, match="weights not found"):
        ProcessExecutor("broken", broken, SPEC, settings=settings).start()
    slow = ModelFactory("tests.misbehaving_models:slow_factory", {"seconds": 30})
    slow_settings = ExecutorSettings(isolation=IsolationSettings(start_timeout_s=1.0))
    with pytest.raises(ModelStartError, match="not built within 1 s"):
        ProcessExecutor("slow", slow, SPEC, settings=slow_settings).start()


def test_a_hung_child_does_not_block_the_other_child_of_the_pool(
    isolated: Isolate,
) -> None:
    executor = isolated("hang", timeout_s=5.0, processes=2)
    assert len(executor.pids()) == 2
    hung: list = []
    thread = threading.Thread(target=lambda: hung.extend(executor.run(frames(7))))
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert parity_of(executor.run(frames(1, 2))) == [1, 0]
    assert time.monotonic() - started < 4.0  # served by the free child, not after the timeout
    thread.join(timeout=30)
    assert hung[0].error == "model hang_model timed out after 5.0 s"


def test_arun_does_not_block_the_event_loop() -> None:
    executor = make_executor(
        "hang_model",
        ModelFactory("tests.misbehaving_models:misbehaving", {"fault": "hang", "trigger": 7}),
        SPEC,
        settings=ExecutorSettings(timeout_s=1.0, isolation=IsolationSettings(**FAST_BACKOFF)),
    )
    assert isinstance(executor, ProcessExecutor)

    async def main() -> tuple[int, list]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        outcomes = await executor.arun(frames(7))
        task.cancel()
        return ticks, outcomes

    try:
        ticks, outcomes = asyncio.run(main())
    finally:
        executor.close()
    assert ticks >= 10 and "timed out" in outcomes[0].error


def test_children_die_with_their_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.isolation_parent"],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        children = json.loads(line)
        assert len(children) == 2 and all(alive(pid) for pid in children)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
    assert wait_until(lambda: not any(alive(pid) for pid in children), timeout=10)


def test_a_moment_without_file_descriptors_is_a_failed_start_not_the_end_of_the_model(
    isolated: Isolate,
) -> None:
    """Review: ``Pipe()`` ran outside the failure handling of a start, so running out of file
    descriptors for a moment stopped the supervisor thread, and with it (the children's parent
    death signal) the model's healthy children; nothing restarted them."""
    executor = isolated("segfault", processes=2)
    healthy = set(executor.pids())
    supervisor = executor._children
    real_pipe, failures = supervisor._ctx.Pipe, {"left": 1}

    def pipe(*args: object, **kwargs: object) -> object:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(24, "Too many open files")
        return real_pipe(*args, **kwargs)

    supervisor._ctx.Pipe = pipe  # type: ignore[method-assign]
    crashed = executor.run(frames(7))  # one child dies; its restart cannot get a pipe once
    assert crashed[0].output is None
    assert wait_until(lambda: executor.health().restarts >= 1, timeout=30)
    assert failures["left"] == 0
    assert len(executor.pids()) == 2 and len(healthy & set(executor.pids())) == 1
    assert supervisor._thread is not None and supervisor._thread.is_alive()
    assert parity_of(executor.run(frames(1, 2))) == [1, 0]


def test_a_torch_module_runs_alike_on_a_thread_and_in_a_child_process() -> None:
    """Review: a worker's thread wrapped an ``nn.Module`` (eval, no grad, numpy in and out) but
    an isolated model's child called it on the raw array, and every frame failed."""
    factory = ModelFactory("tests.misbehaving_models:parity_module")
    isolation = IsolationSettings(**FAST_BACKOFF)  # type: ignore[arg-type]
    for settings in (ExecutorSettings(), ExecutorSettings(isolation=isolation)):
        executor = make_executor("head", factory, SPEC, settings=settings)
        try:
            outcomes = executor.run(frames(1, 2))
            assert [o.error for o in outcomes] == [None, None]
            assert parity_of(outcomes) == [1, 0]
        finally:
            executor.close()


def test_one_slow_call_within_a_batch_is_a_timeout_in_a_process_too(isolated) -> None:
    """As in a thread (tests/test_executor.py): one call 1.8 times over ``timeout_s`` inside
    a batch's limit came back ``executed`` from an isolated model's process."""
    executor = isolated("hang", trigger=2, timeout_s=0.5, hang_s=0.9)
    outcomes = executor.run(frames(1, 2, 3))
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert "timed out after 0.5 s" in str(outcomes[1].error) and outcomes[1].output is None
    health = executor.health()
    assert health.state == "unhealthy" and health.timeouts == 1 and health.successes == 2
    assert len(executor.pids()) == 1  # the process answered in time: not killed
