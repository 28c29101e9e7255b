"""Link training in a low-priority child process: same bundle as in-process, saved by the child,
and a dead child costs one failed job, not the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.store import LinkStore
from mlink.linkstore.training import TrainConfig, after_every_epoch
from mlink.operators.trainer import LinkTrainer
from mlink.operators.training_process import (
    TrainingFailed,
    TrainingJob,
    TrainingProcess,
    TrainingSettings,
    TrainingStopped,
    run_training_job,
    run_until_stopped,
)
from mlink.topics.records import FrameResult, ModelResult
from mlink.topics.specs import VectorSpec
from tests.procs import alive, children

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
SPECS = {"digit": VectorSpec(10, "softmax"), "parity": VectorSpec(2, "softmax")}
CONFIG = TrainConfig(epochs=3, ensemble_epochs=3)


def outputs(n: int = 40) -> dict[str, list[np.ndarray]]:
    digits = np.random.default_rng(0).integers(0, 10, n)
    return {
        "digit": [np.eye(10, dtype=np.float32)[d] for d in digits],
        "parity": [np.eye(2, dtype=np.float32)[d % 2] for d in digits],
    }


def job(store_root: Path | None = None) -> TrainingJob:
    return TrainingJob(
        specs=SPECS,
        outputs=outputs(),
        config=CONFIG,
        measured_costs={"digit": {"ms": 2.0}, "parity": {"ms": 1.0}},
        store_root=str(store_root) if store_root else None,
    )


def child_pid(process: TrainingProcess) -> int:
    pool = process._pool
    assert pool is not None
    (pid,) = pool._processes  # type: ignore[attr-defined]
    return pid


def test_the_child_saves_a_version_the_store_can_load(tmp_path: Path) -> None:
    process = TrainingProcess().start()
    try:
        outcome = process.train(job(tmp_path / "links"))
        pid = child_pid(process)
        assert os.getpriority(os.PRIO_PROCESS, pid) >= os.getpriority(os.PRIO_PROCESS, 0) + 10
    finally:
        process.close()
    assert not alive(pid)
    assert outcome.version == 1 and outcome.tensors is None and outcome.seconds > 0
    bundle = LinkStore(tmp_path / "links").load(1)
    assert bundle.meta.meta["n_samples"] == 40
    assert bundle.meta.meta["measured_costs"] == {"digit": {"ms": 2.0}, "parity": {"ms": 1.0}}
    linkset = LinkSet.from_bundle(bundle.tensors, bundle.meta.meta)
    assert set(linkset.links) == {("digit", "parity"), ("parity", "digit")}


def test_the_child_returns_the_bundle_in_process_training_would_make() -> None:
    process = TrainingProcess(TrainingSettings(nice=0))
    try:
        outcome = asyncio.run(process.atrain(job()))
    finally:
        process.close()
    here = run_training_job(job())
    assert outcome.version is None and outcome.tensors is not None and outcome.meta is not None
    assert outcome.tensors.keys() == here.tensors.keys()
    for name, params in here.tensors.items():
        for param, tensor in params.items():
            assert outcome.tensors[name][param].dtype == tensor.dtype
            np.testing.assert_allclose(outcome.tensors[name][param].numpy(), tensor.numpy())
    assert outcome.meta["links"] == here.meta["links"]


def test_a_trainer_hands_its_buffer_to_the_child_and_records_the_version(tmp_path: Path) -> None:
    store = LinkStore(tmp_path / "links")
    trainer = LinkTrainer(SPECS, store, CONFIG, warmup_frames=40)
    for i, (digit, parity) in enumerate(zip(*outputs().values(), strict=True)):
        results = [
            ModelResult(model="digit", status="executed", output=digit, elapsed_ms=2.0),
            ModelResult(model="parity", status="executed", output=parity, elapsed_ms=1.0),
        ]
        result = FrameResult(
            frame_id=f"s:{i}",
            stream_id="s",
            seq=i,
            epoch=0,
            results=tuple(results),
            degraded=False,
            emitted_at=1.0,
            probe=True,
        )
        assert trainer.add(result)
    assert trainer.ready()
    process = TrainingProcess()
    try:
        version = process.train(TrainingJob.from_trainer(trainer)).version
    finally:
        process.close()
    assert version is not None and trainer.saved(version) == 1
    assert trainer.trained_versions == [1] and not trainer.ready()
    assert store.current() == 1


def test_side_by_side_training_makes_the_same_bundle_and_its_helpers_end_with_the_child() -> None:
    """The cross-fitted link sets train in helper processes of the child; a worker that stops
    kills the child, and the helpers must not outlive it."""
    one = TrainingProcess(TrainingSettings(nice=0, processes=1))
    try:
        alone = one.train(job())
    finally:
        one.close()
    process = TrainingProcess(TrainingSettings(nice=0, processes=2)).start()
    try:
        pid = child_pid(process)
        helpers = helpers_of(pid)
        assert len(helpers) == 2
        side_by_side = process.train(job())
    finally:
        process.close(wait=False)
    assert alone.tensors is not None and side_by_side.tensors is not None
    assert alone.tensors.keys() == side_by_side.tensors.keys()
    for name, params in alone.tensors.items():
        for param, tensor in params.items():
            assert side_by_side.tensors[name][param].equal(tensor), (name, param)
    deadline = time.monotonic() + 20
    while any(alive(h) for h in [pid, *helpers]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(h) for h in [pid, *helpers])


def test_a_helper_killed_mid_job_costs_the_job_its_parallelism_not_its_links() -> None:
    """A helper that dies (the kernel's out-of-memory killer, an operator's kill) breaks the
    child's pool: the job trains again in the child alone, with the same links, and the next
    job finds new helpers."""
    slower = TrainingJob(specs=SPECS, outputs=outputs(200), config=TrainConfig(epochs=40))
    alone = run_training_job(slower)
    process = TrainingProcess(TrainingSettings(nice=0, processes=2)).start()
    try:
        pid = child_pid(process)
        first = helpers_of(pid)
        with ThreadPoolExecutor(1) as caller:
            idle = cpu_ticks(first[0])
            done = caller.submit(process.train, slower)
            deadline = time.monotonic() + 60  # mid-job: once it has trained for half a second
            while cpu_ticks(first[0]) < idle + 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not done.done()
            os.kill(first[0], signal.SIGKILL)
            outcome = done.result(timeout=240)
        assert child_pid(process) == pid  # the same child, not a failed job
        assert outcome.tensors is not None and alone.tensors is not None
        for name, params in alone.tensors.items():
            for param, tensor in params.items():
                assert outcome.tensors[name][param].equal(tensor), (name, param)
        deadline = time.monotonic() + 60
        while len(again := set(children(pid)) - set(first)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(again) == 2  # new helpers, started as the old pool broke
    finally:
        process.close(wait=False)


def cpu_ticks(pid: int) -> int:
    """User and system CPU time of ``pid`` in clock ticks (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def helpers_of(pid: int, n: int = 2) -> list[int]:
    """The child's helper processes, once it has started ``n`` of them (they start with it)."""
    deadline = time.monotonic() + 60
    while len(found := children(pid)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_a_killed_training_process_fails_one_job_and_the_next_starts_a_new_one(
    tmp_path: Path,
) -> None:
    slow = TrainingJob(specs=SPECS, outputs=outputs(400), config=TrainConfig(epochs=500))
    process = TrainingProcess().start()
    try:
        pid = child_pid(process)
        with ThreadPoolExecutor(1) as caller:
            failed = caller.submit(process.train, slow)
            time.sleep(1.0)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(TrainingFailed, match="the training process died") as died:
                failed.result(timeout=60)
        assert not isinstance(died.value, TrainingStopped)  # a crash, reported and retried
        assert process.train(job(tmp_path / "links")).version == 1
        assert child_pid(process) != pid
    finally:
        process.close()


def test_a_job_whose_process_is_closed_under_it_says_it_stopped_not_that_it_died() -> None:
    """A worker that stops mid-training closes its training process: the trainer must not log
    that as a failed training (the quick first links made one likely at every short run's end)."""
    slow = TrainingJob(specs=SPECS, outputs=outputs(400), config=TrainConfig(epochs=500))
    process = TrainingProcess().start()

    async def stop_mid_job() -> None:
        training = asyncio.ensure_future(process.atrain(slow))
        await asyncio.sleep(1.0)
        process.close(wait=False)
        with pytest.raises(TrainingStopped, match="the worker is stopping"):
            await asyncio.wait_for(training, 60)

    try:
        asyncio.run(stop_mid_job())
        assert not process._closed  # the closed job was reported once and forgotten
    finally:
        process.close()


def test_a_training_on_this_thread_ends_after_the_epoch_under_way_once_told_to_stop() -> None:
    """``train_in_child: false``: nothing can kill the training thread, and the worker's
    process does not exit before it returns, so the training checks after every epoch."""
    stopping = threading.Event()
    epochs: list[int] = []

    def count() -> None:  # the outer hook: it runs first, then the training's own check
        epochs.append(1)
        if len(epochs) == 10:
            stopping.set()

    slow = TrainingJob(specs=SPECS, outputs=outputs(400), config=TrainConfig(epochs=100_000))
    with after_every_epoch(count):
        with pytest.raises(TrainingStopped, match="the worker is stopping"):
            run_until_stopped(slow, stopping)
        assert len(epochs) == 10  # ended after the epoch that was under way
        run_training_job(job())
        one_job = len(epochs) - 10
        run_until_stopped(job(), threading.Event())  # not stopped: trains all of its epochs
        assert one_job > 0 and len(epochs) == 10 + 2 * one_job
    run_training_job(job())  # the hook is gone with its block
    assert len(epochs) == 10 + 2 * one_job


STOP_MID_JOB = """
import asyncio, sys, time
sys.path.insert(0, {root!r})
from mlink.linkstore.training import TrainConfig
from mlink.operators.training_process import TrainingJob, TrainingProcess, TrainingSettings
from tests.test_training_process import SPECS, child_pid, helpers_of, outputs

async def main():
    process = TrainingProcess(TrainingSettings(processes=2)).start()
    pid = child_pid(process)
    print("child", pid, *helpers_of(pid), flush=True)
    job = TrainingJob(specs=SPECS, outputs=outputs(400), config=TrainConfig(epochs=100_000))
    asyncio.ensure_future(process.atrain(job))
    await asyncio.sleep(2.0)
    process.close(wait=False)
    print("closed", flush=True)

asyncio.run(main())
"""


def test_a_process_that_closes_its_training_child_mid_job_exits_without_waiting_for_it() -> None:
    """What a worker does at a stop: the job (minutes of epochs) is abandoned, the child and its
    helpers die and the process ends. Before, the pool's exit hook waited for the job; and a
    helper still starting when its parent died trained on, an orphan, for good."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    script = subprocess.Popen(
        [sys.executable, "-c", STOP_MID_JOB.format(root=root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid, *helpers = map(int, script.stdout.readline().split()[1:])  # type: ignore[union-attr]
        assert len(helpers) == 2
        assert script.stdout.readline().strip() == "closed"  # type: ignore[union-attr]
        closed = time.monotonic()
        script.wait(timeout=120)
        print(f"\nexited {time.monotonic() - closed:.1f} s after closing")
        deadline = time.monotonic() + 10
        while any(alive(p) for p in [pid, *helpers]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in [pid, *helpers])
    finally:
        script.kill()
