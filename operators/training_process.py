"""Link training in a child process at low priority, off the worker's event loop and models.

Why not a thread of the worker: torch's training loop is Python code between small kernels, so a
training thread holds the GIL most of the time and the event loop (Kafka heartbeats, agents) and
the model threads wait for it; on 2 cores it also takes a core the models need. A child process
has its own GIL, runs at ``nice`` 10 so the kernel serves the worker first, and uses one torch
thread. Figures: ``bench/isolation.py training``.

The child is kept warm between jobs (importing torch costs seconds). Input: the training samples
(numpy arrays), specs and config, as a picklable :class:`TrainingJob`. Output: the saved version
number when the job names a link store root (the child saves itself; :class:`LinkStore` is
process-safe, writers take a flock), else the bundle (tensors and meta) for the caller to save.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from mlink.linkstore.crossfit import TrainMap
from mlink.linkstore.ensemble import EnsembleKind
from mlink.linkstore.store import LinkStore
from mlink.linkstore.training import TrainConfig, after_every_epoch
from mlink.operators.orphans import die_with_parent
from mlink.operators.trainer import LinkTrainer, train_bundle
from mlink.topics.specs import OutputSpec

__all__ = [
    "TrainingFailed",
    "TrainingJob",
    "TrainingOutcome",
    "TrainingProcess",
    "TrainingSettings",
    "TrainingStopped",
    "run_training_job",
    "run_until_stopped",
]

log = logging.getLogger(__name__)
Tensors = dict[str, dict[str, torch.Tensor]]
AUTO_PROCESSES_MAX = 4
"""Each helper imports torch (a few hundred MB): more cores than this do not get one each."""


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the platform tells)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class TrainingFailed(RuntimeError):
    """The training process died (killed, out of memory, crashed); the next job starts a new one."""


class TrainingStopped(TrainingFailed):
    """The job's process was closed under it (:meth:`TrainingProcess.close`): the worker stops,
    which is no failure to report or retry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingSettings:
    """How the training process runs."""

    nice: int = 10
    """Added to the child's niceness: the worker's event loop and models come first."""
    torch_threads: int = 1
    start_method: Literal["spawn", "forkserver"] = "spawn"
    processes: int = 1
    """Processes that train a job's cross-fitted link sets side by side, at the child's
    priority (each link set seeds itself, so the bundle is the same however many): 1 trains
    them one after another in the child; 0 is one per CPU this process may use, at most
    :data:`AUTO_PROCESSES_MAX`. Not the default: each helper imports torch (seconds of CPU and a
    few hundred MB), which only a long training pays back."""

    def __post_init__(self) -> None:
        if self.processes < 0:
            raise ValueError(f"processes must be >= 0 (0: one per CPU), got {self.processes}")

    def helpers(self) -> int:
        """Helper processes the child starts: none when the link sets train one at a time."""
        n = self.processes or min(_usable_cpus(), AUTO_PROCESSES_MAX)
        return n if n > 1 else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingJob:
    """Everything a training run needs, picklable."""

    specs: Mapping[str, OutputSpec]
    outputs: Mapping[str, Sequence[Any]]
    config: TrainConfig
    ensemble: EnsembleKind = "weighted"
    measured_costs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    groups: Sequence[str] | None = None
    """Each sample's stream id (cross-fitting holds out whole streams and stream blocks)."""
    seqs: Sequence[int] | None = None
    """Each sample's sequence number in its stream: also fit stream synthesis (None: do not)."""
    cascades: bool = False
    """Fit the ``gate`` mode too (``LinkSettings.cascades``)."""
    balance_streams: bool = True
    """Weigh every stream the same in the estimates (``LinkSettings.balance_streams``)."""
    fill: int = 1
    """Frames per batch when the costs were measured (``LinkTrainer.batch_fill``)."""
    store_root: str | None = None
    """Save the bundle there (in the child) and return the version; None returns the bundle."""
    number_after: int = 0
    """The saved version is numbered above this one (``LinkTrainer.number_after``)."""

    @classmethod
    def from_trainer(cls, trainer: LinkTrainer, *, save_in_child: bool = True) -> TrainingJob:
        """Training on every sample ``trainer`` buffers: saved by whoever runs it, where the
        trainer's store is (``save_in_child``), or returned as a bundle."""
        return cls(
            specs=trainer.specs,
            outputs=trainer.training_outputs(),
            config=trainer.config,
            ensemble=trainer.ensemble,  # type: ignore[arg-type]
            measured_costs=trainer.measured_costs(),
            groups=trainer.training_groups(),
            seqs=trainer.training_seqs(),
            cascades=trainer.cascades,
            balance_streams=trainer.balance_streams,
            fill=trainer.batch_fill(),
            store_root=str(trainer.store.root) if save_in_child else None,
            number_after=trainer.number_after,
        )

    def quick(self, epochs: int) -> TrainingJob | None:
        """This job at ``epochs`` epochs of links and of ensembles: a pipeline's first links,
        ready in seconds where the full cross-fit takes most of a minute (docs/stream-synthesis.md,
        "The first links"). None when that would train no less."""
        config = self.config
        if epochs <= 0 or epochs >= max(config.epochs, config.ensemble_epochs):
            return None
        short = replace(
            config,
            epochs=min(epochs, config.epochs),
            ensemble_epochs=min(epochs, config.ensemble_epochs),
        )
        return replace(self, config=short)


@dataclass(frozen=True, slots=True)
class TrainingOutcome:
    """A finished job: the saved ``version``, or the ``tensors`` and ``meta`` to save."""

    version: int | None
    tensors: Tensors | None
    meta: dict[str, Any] | None
    seconds: float
    """Wall time in the child, training and saving."""


def run_until_stopped(job: TrainingJob, stopping: threading.Event) -> TrainingOutcome:
    """:func:`run_training_job` on this thread, ended after the epoch under way once
    ``stopping`` is set (``train_in_child: false``): nothing can kill a thread, and the process
    does not exit before it returns, so a worker stopped under a minute-long training waited out
    its stop deadline and exited with an error."""

    def check() -> None:
        if stopping.is_set():
            raise TrainingStopped("the link training was stopped: the worker is stopping")

    with after_every_epoch(check):
        return run_training_job(job)


def run_training_job(job: TrainingJob, train_map: TrainMap = map) -> TrainingOutcome:
    """Train (and save, if the job says where); runs in the training process or anywhere else.
    ``train_map`` trains the cross-fitted link sets
    (:func:`~mlink.linkstore.crossfit.cross_fit`)."""
    started = time.perf_counter()
    tensors, meta = train_bundle(
        job.specs,
        job.outputs,
        job.config,
        job.ensemble,
        job.measured_costs,
        job.groups,
        job.seqs,
        cascades=job.cascades,
        balance_streams=job.balance_streams,
        fill=job.fill,
        train_map=train_map,
    )
    if job.store_root is not None:
        version = LinkStore(job.store_root).save(tensors, meta, after=job.number_after)
        return TrainingOutcome(version, None, None, time.perf_counter() - started)
    return TrainingOutcome(None, tensors, meta, time.perf_counter() - started)


_helpers: concurrent.futures.ProcessPoolExecutor | None = None  # the child's, if it has any
_helper_settings: TrainingSettings | None = None


def _run_in_child(job: TrainingJob) -> TrainingOutcome:
    global _helpers
    try:
        outcome = run_training_job(job, _helpers.map if _helpers is not None else map)
    except BrokenProcessPool:  # a helper died (killed, out of memory): this job trains alone
        log.warning("a link-training helper process died; training this job in one process")
        # new ones for the next job; they start at this process's (lowered) priority already
        again = None if _helper_settings is None else replace(_helper_settings, nice=0)
        _helpers = _start_helpers(again) if again is not None else None
        outcome = run_training_job(job)
    if outcome.tensors is None:
        return outcome
    as_numpy = {k: {p: t.numpy() for p, t in d.items()} for k, d in outcome.tensors.items()}
    return TrainingOutcome(None, as_numpy, outcome.meta, outcome.seconds)  # type: ignore[arg-type]


def _start_helpers(settings: TrainingSettings) -> concurrent.futures.ProcessPoolExecutor:
    """``settings.nice``: what each helper adds to the niceness it starts with (this one's)."""
    helpers = settings.helpers()
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=helpers,
        mp_context=multiprocessing.get_context(settings.start_method),
        initializer=_init_child,
        initargs=(replace(settings, processes=1), os.getpid()),
    )
    for _ in range(helpers):  # start them now, each importing torch, not at the first job
        pool.submit(int)
    # a pool's process joins its children as it exits, before the hook that would end these:
    # end them first (without this the child never exits and its pool's shutdown hangs; a
    # graceful shutdown here hung now and then too). They hold nothing to keep.
    multiprocessing.util.Finalize(pool, _kill_pool, args=(pool,), exitpriority=10)
    return pool


def _kill_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """End a pool and its processes now, abandoning what they run."""
    # no public way to end a pool's processes before Python 3.14 (terminate_workers)
    processes = list((pool._processes or {}).values())  # type: ignore[attr-defined]
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()


def _init_child(settings: TrainingSettings, parent: int) -> None:
    # No PR_SET_PDEATHSIG here: the pool starts its process from whichever thread submits first,
    # and the death signal would fire when that thread ends; the parent-pid watchdog is enough.
    global _helpers, _helper_settings
    # ``parent``: a process whose parent died while it started (a stop right after the first
    # sample) would otherwise watch its new parent, init, and train on for good
    die_with_parent(parent, death_signal=False)
    torch.set_num_threads(settings.torch_threads)
    if settings.helpers():  # they train every link set: this process needs no optimizer
        _helper_settings = settings
        _helpers = _start_helpers(settings)
    else:  # the first optimizer imports torch._dynamo (seconds): before the first job
        torch.optim.RMSprop([torch.zeros(1, requires_grad=True)])
    # only now: a child starts with the warm-up's first sample, while every model runs on
    # every frame, and at nice 10 its imports (and its helpers', which it would pass the
    # niceness on to) waited for the warm-up to end, into the first training
    if settings.nice:
        os.nice(settings.nice)


class TrainingProcess:
    """A warm child process that runs :class:`TrainingJob` s one at a time."""

    def __init__(self, settings: TrainingSettings | None = None) -> None:
        self.settings = settings or TrainingSettings()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._closed: set[concurrent.futures.Future[Any]] = set()  # ended by close(), not a crash

    def train(self, job: TrainingJob) -> TrainingOutcome:
        """Blocking: run ``job`` in the child (started on first use)."""
        future = self._submit(job)
        try:
            outcome = future.result()
        except BrokenProcessPool as exc:
            raise self._died(future, exc) from exc
        return self._result(outcome)

    async def atrain(self, job: TrainingJob) -> TrainingOutcome:
        """The same, awaited without blocking the event loop."""
        future = self._submit(job)
        try:
            outcome = await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            raise self._died(future, exc) from exc
        return self._result(outcome)

    def _died(self, future: concurrent.futures.Future[Any], exc: BaseException) -> TrainingFailed:
        if future in self._closed:
            self._closed.discard(future)
            return TrainingStopped("the training process was closed: the worker is stopping")
        self._pool = None
        return TrainingFailed(f"the training process died: {exc}")

    def start(self) -> TrainingProcess:
        """Start the child now (it imports torch) rather than on the first job."""
        self._ensure_pool().submit(int).result()
        return self

    def warm(self) -> None:
        """Start the child, and its helpers, without waiting: the first job then finds them
        ready (torch imported) instead of starting them."""
        if self._pool is None:
            self._ensure_pool().submit(int)

    def close(self, wait: bool = True) -> None:
        """Stop the child; ``wait=False`` also kills it, abandoning a running job. The pool's
        exit hook waits for a running job, so a worker stopped mid-training sat out its stop
        deadline (15 s) and then blamed the broker (a helper's rollout audit, stop 46)."""
        if self._pool is None:
            return
        self._closed |= {f for f in self._running if not f.done()}
        if wait:
            self._pool.shutdown(wait=True, cancel_futures=True)
        else:  # a version it was saving is written to a temporary name: none appears
            _kill_pool(self._pool)
        self._pool = None

    def _ensure_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            s = self.settings
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context(s.start_method),
                initializer=_init_child,
                initargs=(s, os.getpid()),
            )
        return self._pool

    def _submit(self, job: TrainingJob) -> concurrent.futures.Future[TrainingOutcome]:
        try:
            future = self._ensure_pool().submit(_run_in_child, job)
        except BrokenProcessPool:
            self._pool = None
            future = self._ensure_pool().submit(_run_in_child, job)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return future

    def _result(self, outcome: TrainingOutcome) -> TrainingOutcome:
        if outcome.tensors is None:
            return outcome
        tensors = {
            k: {p: torch.from_numpy(np.asarray(a)) for p, a in d.items()}
            for k, d in outcome.tensors.items()
        }
        return TrainingOutcome(None, tensors, outcome.meta, outcome.seconds)
