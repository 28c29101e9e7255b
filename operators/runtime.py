"""The per-process runtime shared by the MLink operators of one worker.

One :class:`MLink` per worker process holds what the agents share: the control state replayed
from the control topic, the built models and the threads they run in, the link store and the
link versions loaded from it, counters, and the trainer's buffer. It knows nothing about faust:
the attach functions of :mod:`mlink.operators` read and update it from their agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlink.linkstore.bundle import LoadedLinks, load_bundle
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.store import LinkStore, StoreError
from mlink.linkstore.streamlinks import StreamLinks, StreamMemory
from mlink.linkstore.targets import budget_fit_problem
from mlink.operators.content_tally import ContentTally
from mlink.operators.executor import ModelExecutor, start_executor
from mlink.operators.isolation import ModelStartError
from mlink.operators.library_threads import limit_library_threads
from mlink.operators.metrics import WorkerMetrics
from mlink.operators.model_settings import ModelFactory
from mlink.operators.recent import RecentIds
from mlink.operators.relearn import model_set_change
from mlink.operators.settings import Model, Settings, SettingsError
from mlink.operators.state import ControlState
from mlink.operators.trainer import LinkTrainer
from mlink.operators.warmup_hold import TrainingClock
from mlink.topics.records import Plan
from mlink.topics.signing import Signer
from mlink.topics.specs import OutputSpec

__all__ = ["MLink"]

log = logging.getLogger("mlink.worker")

#: Unusable link versions a worker remembers (with why, for degraded results' errors).
UNUSABLE_KEPT = 64


class MLink:
    """What the operators of one worker share; build one per process and attach it to an app.

    ``models`` are every model of the pipeline, in a fixed order (every worker must list the
    same ones: plans and links name them). Models are built lazily by :meth:`build_models`.
    """

    def __init__(
        self, settings: Settings, models: Sequence[Model], signer: Signer | None = None
    ) -> None:
        if isinstance(models, Mapping) or not all(isinstance(m, Model) for m in models):
            raise SettingsError(
                "MLink(settings, models): models is a sequence of Model(name=..., fn=..., "
                f"spec=...), got {type(models).__name__} of "
                f"{sorted({type(m).__name__ for m in models})}"
            )
        if len(models) < 2:
            raise SettingsError("MLink needs at least two models: links map one to another")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise SettingsError(f"model names must be unique, got {names}")
        costs = {m.name: dict(m.cost) for m in models}
        if (problem := budget_fit_problem(settings.budget, costs)) is not None:
            raise SettingsError(f"Settings.budget {dict(settings.budget)}: {problem}")
        self.settings = settings
        self.models: dict[str, Model] = {m.name: m for m in models}
        self.model_names: list[str] = names
        self.specs: dict[str, OutputSpec] = {m.name: m.spec for m in models}
        self.names = settings.topics
        self.state = ControlState(names, settings.links.probe_every)
        self.store = LinkStore(settings.links.store)
        self.metrics: Counter[str] = Counter()
        self.prom = WorkerMetrics(settings.name, names)
        self.prom.events.counts = self.metrics  # mlink_worker_events_total, read at scrape
        self.prom.warming_up.set_function(lambda: float(self.state.warming_up))
        self.runners: dict[str, ModelExecutor] = {}
        self.signer = signer if signer is not None else Signer(())
        self.limits = settings.limits
        self.completed = RecentIds()
        self.predicted: dict[str, float] = {}  # the controller's estimate for the active set
        self.content = ContentTally()  # the plan's estimate weighed by what the frames showed
        # link versions that cannot be used, and why: the newest UNUSABLE_KEPT (frames name
        # whatever version their records say, so distinct bad versions must not pile up)
        self.unusable: OrderedDict[int, str] = OrderedDict()
        # of those, the versions trained for another model set, and how it differs: the
        # controller learns the links again for them (:func:`.relearn.model_set_change`)
        self.other_models: dict[int, str] = {}
        self.loading: dict[int, asyncio.Future[Any]] = {}  # the replay's load of a version
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closers: list[Callable[[], object]] = []
        links = settings.links
        self.trainer = LinkTrainer(
            self.specs,
            self.store,
            links.train,
            links.warmup_frames,
            links.retrain_every,
            links.ensemble,
            stream=links.stream,
            cascades=links.cascades,
            balance_streams=links.balance_streams,
        )
        self.memory = StreamMemory()  # per stream, each model's last real run (stream mode)
        self.training = TrainingClock()  # this worker's own link training, for the warm-up hold

    # -- readiness ----------------------------------------------------------------------------
    def event(self, name: str) -> asyncio.Event:
        """A named readiness event (``control`` replayed, ``models`` built), made in the loop."""
        if name not in self._events:
            self._events[name] = asyncio.Event()
        return self._events[name]

    async def ready(self) -> None:
        """Until the control log is replayed and every model is built: only then plan."""
        await self.event("control").wait()
        await self.event("models").wait()

    # -- models -------------------------------------------------------------------------------
    def executor(self, name: str) -> ThreadPoolExecutor:
        """One thread per model (and per background job): models run off the event loop, so
        heartbeats keep flowing while they compute."""
        if name not in self._executors:
            self._executors[name] = ThreadPoolExecutor(1, thread_name_prefix=f"mlink-{name}")
        return self._executors[name]

    async def _start(self, name: str) -> None:
        model = self.models[name]
        # in a thread: built here, off the event loop; isolated: rebuilt in each child process
        target = model.factory() if model.isolation is not None else ModelFactory(model.make)
        settings = model.executor_settings(self.settings.model_threads)
        try:
            self.runners[name] = await start_executor(
                name, target, model.spec, batch=model.batch, settings=settings
            )
        except ModelStartError:
            raise  # an isolated model's: it names the model and the child's traceback
        except Exception as exc:  # a broken config fails loudly at start, naming the model
            raise ModelStartError(
                f"model {name!r} could not be built: {type(exc).__name__}: {exc} (`mlink check "
                "CONFIG` builds and calls every model of a config without a broker)"
            ) from exc

    async def build_models(self, names: Sequence[str] | None = None) -> None:
        """Build the models (in parallel, off the loop) before any frame is planned, so a slow
        factory (loading weights, fitting) never counts against a frame."""
        async with self._build_lock:
            todo = [m for m in (names or self.model_names) if m not in self.runners]
            if todo:
                started = time.perf_counter()
                await asyncio.gather(*(self._start(m) for m in todo))
                log.info("built %d models in %.1f s", len(todo), time.perf_counter() - started)
                pinned = limit_library_threads(self.settings.model_threads)
                if pinned:
                    log.info("intra-op threads per model call: %s", pinned)
        if all(m in self.runners for m in self.model_names):
            self.event("models").set()

    @property
    def _build_lock(self) -> asyncio.Lock:
        if "build" not in self._locks:
            self._locks["build"] = asyncio.Lock()
        return self._locks["build"]

    def declared_costs(self) -> dict[str, dict[str, float]]:
        return {m: dict(model.cost) for m, model in self.models.items() if model.cost}

    # -- links --------------------------------------------------------------------------------
    def links(self, version: int | None) -> LoadedLinks | None:
        """A usable link version, loaded once per process; None (logged once per version) when
        it cannot be loaded or was trained for another model set (synthesizing from it would
        name unknown models or leave an added one out: :attr:`other_models` says how). A
        version that failed only because it was missing is tried again later
        (:data:`~mlink.linkstore.bundle.BAD_RETRY_S`) and used once it loads."""
        if version is None or version in self.other_models:  # its models do not change
            return None
        try:
            loaded = load_bundle(self.store, version)
        except StoreError as exc:
            self._unusable(version, str(exc)[:500])
            return None
        if (change := model_set_change(loaded.linkset.specs, self.specs)) is not None:
            self.other_models[version] = change
            reason = f"trained for other models than this config's ({change})"
            self._unusable(version, reason, logging.WARNING)  # a model change, not damage
            return None
        self.unusable.pop(version, None)
        return loaded

    async def loaded(self) -> None:
        """Until the load of the plan's link version that the control replay started has
        ended (:func:`~mlink.operators.control_operators.prefetch_links`): a frame planned
        before it ended could not tell a version trained for other models (:meth:`plan`), and
        a restarted worker answered its first frames with holes (a helper's re-audit)."""
        future = self.loading.get(self.state.link_version)  # type: ignore[arg-type]
        if future is not None and not future.done():
            with contextlib.suppress(Exception):  # the loader logs its own failures
                await asyncio.shield(future)

    def plan(self, seq: int, cascades: bool = True) -> Plan:
        """The state's plan for frame ``seq``, with every model run when this worker cannot
        use its link version: trained for other models than this config's (from a restart on
        an edited config until the controller's relearn plan), or missing or damaged in the
        store (until the relearn, or for good on a worker that keeps an older plan whose
        version was pruned: a straggler on the old config, 620 of 646 frames came back with 3
        models ``missing`` in a helper's rollout audit, stop 45). A version that loads again
        is used again (:meth:`links` retries missing ones)."""
        plan = self.state.plan(seq, cascades)
        version = plan.link_version
        if version is not None and (version in self.other_models or version in self.unusable):
            return Plan(epoch=plan.epoch, active=self.state.models, link_version=version)
        return plan

    def _unusable(self, version: int, reason: str, level: int = logging.ERROR) -> None:
        self.metrics["bad_link_versions"] += 1
        if self.unusable.get(version) != reason:
            log.log(level, "cannot use link version %s: %s", version, reason)
        self.unusable[version] = reason
        self.unusable.move_to_end(version)
        while len(self.unusable) > UNUSABLE_KEPT:
            self.unusable.popitem(last=False)

    def linksets(self, versions: Sequence[int | None]) -> dict[int, LinkSet]:
        """The usable link sets among ``versions`` (a batch's frames may name several)."""
        out: dict[int, LinkSet] = {}
        for version in set(versions):
            loaded = self.links(version)
            if loaded is not None and version is not None:
                out[version] = loaded.linkset
        return out

    def stream_links(self, version: int | None) -> StreamLinks | None:
        """The stream synthesis of a link version, if it was fitted for streams."""
        loaded = self.links(version)
        return None if loaded is None else loaded.stream

    def estimates(self) -> dict[str, float]:
        """Agreement estimates for synthesized outputs: live (probe frames) where measured, else
        what the controller predicted for the current active set."""
        return {**self.predicted, **self.state.live_agreement}

    def count(self, counts: Mapping[str, int]) -> None:
        self.metrics.update(counts)

    def on_close(self, close: Callable[[], object]) -> None:
        """Run ``close`` when the worker stops (training processes, endpoints...)."""
        self._closers.append(close)

    def close(self) -> None:
        for close in self._closers:
            close()
        for runner in self.runners.values():
            runner.close()
        for pool in self._executors.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"MLink({self.settings.name!r}, models={self.model_names})"
