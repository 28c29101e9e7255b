"""Plain settings for the MLink operators: what a faust user passes instead of a YAML file.

A :class:`Model` is a black box: a callable (or a ``torch.nn.Module``) from one frame to one
output, with the :class:`~mlink.topics.specs.OutputSpec` that validates it. :class:`Settings`
holds everything else an operator needs to know. Nothing here reads files, environment variables
or Kafka: `mlink.deploy` translates its YAML config into these objects, and a user's own app
builds them directly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from torch import nn

from mlink.linkstore.crossfit import MIN_FIT, MIN_TRAIN
from mlink.linkstore.schedule import MAX_PROBE_EVERY
from mlink.linkstore.training import TrainConfig
from mlink.operators.model_settings import (
    ExecutorSettings,
    IsolationSettings,
    ModelFactory,
    frame_callable,
)
from mlink.topics.control import budget_problem, target_model
from mlink.topics.limits import DEFAULT_LIMITS, Limits
from mlink.topics.names import TopicNames
from mlink.topics.specs import BoxesSpec, SequenceSpec, VectorSpec

__all__ = ["BUDGET_KEYS", "LinkSettings", "Model", "Settings", "SettingsError"]

_NAME: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
BUDGET_KEYS: Final = ("ms", "memory_mb", "fraction", "target_agreement")
"""Budget keys: per-frame ms, memory in MB, ms as a share of running every model, or an
agreement target (the cheapest plan whose estimated agreement meets it)."""


class SettingsError(ValueError):
    """An operator setting is invalid; the message names it and what is allowed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    """One black-box model.

    Give ``fn`` (a callable or a ``torch.nn.Module``) or ``build`` (a zero-argument factory, or
    a :class:`~mlink.operators.model_settings.ModelFactory` naming one by import path, called once
    per worker before any frame is planned, so slow loading never counts against a frame).
    ``batch`` says the callable also maps an ``(n, ...)`` stack of frames to ``n`` outputs.
    ``cost`` declares ``{"ms": ..., "memory_mb": ...}`` per frame; undeclared ms are measured
    live. ``timeout_s`` bounds one call: a call that takes longer yields an error output for its
    frames and the model is reported unhealthy. ``isolation`` runs the model in child processes
    (a leak, a hang or a segfault then costs a restart of that model, not the worker); the model
    must then be picklable or built from a ``ModelFactory``.
    """

    name: str
    spec: VectorSpec | BoxesSpec | SequenceSpec
    fn: Callable[[Any], Any] | nn.Module | None = None
    build: Callable[[], Callable[[Any], Any] | nn.Module] | None = None
    batch: bool = False
    cost: Mapping[str, float] = field(default_factory=dict)
    timeout_s: float = 60.0
    isolation: IsolationSettings | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SettingsError(
                f"Model.name {self.name!r}: use 1-128 letters, digits, '_', '.' or '-'"
            )
        if not isinstance(self.spec, VectorSpec | BoxesSpec | SequenceSpec):
            raise SettingsError(
                f"Model {self.name!r}: spec must be a VectorSpec, BoxesSpec or SequenceSpec, "
                f"got {type(self.spec).__name__}"
            )
        if (self.fn is None) == (self.build is None):
            raise SettingsError(
                f"Model {self.name!r}: give exactly one of fn= (a callable or nn.Module) or "
                "build= (a factory returning one)"
            )
        if self.fn is not None and not callable(self.fn):
            raise SettingsError(f"Model {self.name!r}: fn is not callable")
        unknown = sorted(set(self.cost) - {"ms", "memory_mb"})
        if unknown:
            raise SettingsError(f"Model {self.name!r}: unknown cost keys {unknown}")
        if any(
            not (isinstance(v, int | float) and math.isfinite(v) and v >= 0)
            for v in self.cost.values()
        ):
            raise SettingsError(f"Model {self.name!r}: costs must be finite numbers >= 0")
        object.__setattr__(self, "cost", dict(self.cost))
        if not (isinstance(self.timeout_s, int | float) and self.timeout_s > 0):
            raise SettingsError(f"Model {self.name!r}: timeout_s must be > 0")

    def executor_settings(self, library_threads: int | None = 1) -> ExecutorSettings:
        """How to run it; an isolated model's children get ``library_threads`` (the worker's
        ``Settings.model_threads``), as the worker's own model threads do."""
        isolation = self.isolation
        if isolation is not None:
            isolation = replace(isolation, library_threads=library_threads)
        return ExecutorSettings(timeout_s=self.timeout_s, isolation=isolation)

    def factory(self) -> ModelFactory:
        """How a child process rebuilds this model (process isolation)."""
        if isinstance(self.build, ModelFactory):
            return self.build
        if self.build is not None:
            return ModelFactory(self.build)
        return ModelFactory.of(self.fn)  # type: ignore[arg-type]

    def make(self) -> Callable[[Any], Any]:
        """The callable to run: built now if ``build`` was given; modules wrapped for numpy."""
        if isinstance(self.build, ModelFactory):
            made: Any = self.build.build()
        else:
            made = self.fn if self.fn is not None else self.build()  # type: ignore[misc]
        made = frame_callable(made)
        if not callable(made):
            raise SettingsError(
                f"Model {self.name!r}: build() returned {type(made).__name__}, not a callable "
                "mapping a frame to an output"
            )
        return made


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSettings:
    """How links are trained and kept.

    ``store`` is a directory or an fsspec URL that every worker reaches. The first links train
    after ``warmup_frames`` frames on which every model ran; afterwards every ``probe_every``-th
    frame of a stream runs every model (training data and live agreement), and
    ``retrain_every`` new probe frames trigger a retrain (0 = train once); after each new version
    is announced the trainer deletes all but the ``keep_versions`` newest, the one in force and
    a pinned one (0 = keep every one; frames in flight name versions of the last few plans
    only). A worker whose planned and already fetched frames make up its ``warmup_frames``
    stops fetching for up to ``hold_s`` until the first links arrive: a backlog then waits in
    Kafka for the budgeted plan instead of running every model on every frame while the links
    train (0 = never wait). While
    this worker's own trainer is training them, it waits for that training to end (up to five
    ``hold_s`` in all) and then up to ``hold_s`` more (:mod:`mlink.operators.warmup_hold`).
    ``train_in_child`` trains in a separate, lower-priority process (one torch thread), so
    training never starves the models or the heartbeats; False trains on a thread.
    ``training_processes`` (with ``train_in_child``): processes at that priority that train
    the cross-fitted link sets side by side, the same links sooner (1: the child alone; 0: one
    per CPU, at most 4; ``TrainingSettings.processes``).
    ``stream`` plans per frame of a stream (docs/stream-synthesis.md): each model runs on a
    period of its own and is synthesized in between from its last real output, a detector that
    runs, or the paper's links, whichever the probes say agrees best for the cost;
    ``probe_stride`` moves each block's probe through the block, so probes land at every lag.
    ``first_epochs`` (with ``stream``): a pipeline's first links train only this many epochs, so
    the warm-up's hold ends in seconds rather than after the whole cross-fit; a full training
    on the same samples follows at once and replaces them (0: the first links train in full;
    docs/stream-synthesis.md, "The first links").
    ``cascades`` (with ``stream``) also lets a box model run only on the frames where another
    box model that runs finds anything (a ``gate`` mode; the fused frame operator runs the source
    first; the split layout runs such a model on every frame). Off by default: it keeps 0.2-1.1
    points more on the OpenCV video bench, but -0.4 to +0.3 on the DNN one, where it overruns
    tight budgets by up to 0.6 points of compute (BENCHMARKS.md, "Cascades").
    ``balance_streams`` (with ``stream``): the trainer's estimates weigh every stream the same,
    however many warm-up or probe frames it sent (a backlog's warm-up is whatever the fetches
    delivered); False weighs every sample, right for cameras at very different frame rates
    (docs/stream-synthesis.md, "A warm-up from a backlog"). The paper's links' selection oracle
    weighs samples alike either way: weighing streams alike there did no better on replayed
    backlogs (BENCHMARKS.md, "The paper's links under a backlog").
    ``relearn_after_s``: once the store has not held the link version in force for this long
    (a store lost or replaced under the pipeline), the controller runs every model again and the
    trainer trains new links (:mod:`mlink.operators.relearn`; 0: never).
    """

    store: str = "linkstore-data"
    warmup_frames: int = 60
    probe_every: int = 20
    retrain_every: int = 0
    keep_versions: int = 32
    ensemble: Literal["weighted", "fusion"] = "weighted"
    selector: Literal["exact", "greedy", "lookahead", "auto"] = "auto"
    train: TrainConfig = field(default_factory=TrainConfig)
    hold_s: float = 60.0
    train_in_child: bool = True
    training_processes: int = 1
    stream: bool = False
    first_epochs: int = 5
    probe_stride: int = 0
    cascades: bool = False
    balance_streams: bool = True
    relearn_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.warmup_frames < MIN_TRAIN:
            raise SettingsError(
                f"LinkSettings.warmup_frames must be >= {MIN_TRAIN}: the first links are "
                f"cross-fitted, and each of two folds needs {MIN_FIT} frames to train on"
            )
        if self.relearn_after_s < 0:
            raise SettingsError("LinkSettings.relearn_after_s must be >= 0 (0: never relearn)")
        if self.hold_s < 0:
            raise SettingsError("LinkSettings.hold_s must be >= 0 (0: never wait for links)")
        counts = (self.probe_every, self.retrain_every, self.probe_stride, self.keep_versions)
        if min(*counts, self.training_processes, self.first_epochs) < 0:
            raise SettingsError(
                "LinkSettings.probe_every, retrain_every, probe_stride, keep_versions, "
                "training_processes and first_epochs must be >= 0"
            )
        if max(self.probe_every, self.probe_stride) > MAX_PROBE_EVERY:
            raise SettingsError(
                f"LinkSettings.probe_every and probe_stride must be <= {MAX_PROBE_EVERY} "
                f"(got {self.probe_every} and {self.probe_stride}): a plan's schedule past it "
                "is refused"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the operators of one pipeline need besides the models.

    ``name`` prefixes every agent name (stable names in logs, metrics and recovery). ``budget``
    bounds the active set (see :data:`BUDGET_KEYS`). ``batch_size`` and ``batch_wait_s`` shape
    the frames taken together from Kafka: a batch is planned just before it runs, so planning
    stays close to execution and a backlog waits in Kafka, not in buffers.
    ``output_timeout_s`` only matters when model operators run apart from the link operator (it
    bounds the join); ``max_in_flight`` bounds the frames a planner has planned but not yet seen
    answered in that layout. ``metrics_port`` serves Prometheus metrics on
    ``metrics_host`` (None: off; 0: a free port, logged). ``limits`` bound every record, image
    and id the operators accept (:mod:`mlink.topics.limits`). ``model_threads`` are OpenCV's
    and torch's intra-op threads once the models are built (None: the libraries' defaults;
    :func:`~mlink.operators.library_threads.limit_library_threads` says why 1).
    """

    name: str
    budget: Mapping[str, float]
    topics: TopicNames = field(default_factory=TopicNames)
    links: LinkSettings = field(default_factory=LinkSettings)
    batch_size: int = 8
    batch_wait_s: float = 0.02
    output_timeout_s: float = 30.0
    max_in_flight: int = 64
    live_report_every: int = 5
    metrics_every_s: float = 30.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    limits: Limits = DEFAULT_LIMITS
    model_threads: int | None = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SettingsError(f"Settings.name {self.name!r}: use letters, digits, '_.-'")
        # per-model accuracy targets ("target_agreement:<model>", budget.targets in a config)
        unknown = sorted(
            k for k in self.budget if k not in BUDGET_KEYS and target_model(str(k)) is None
        )
        if unknown or not self.budget:
            raise SettingsError(
                f"Settings.budget {dict(self.budget)!r}: give at least one of {BUDGET_KEYS}"
                + (f"; unknown keys {unknown}" if unknown else "")
            )
        if (problem := budget_problem(self.budget)) is not None:  # values, per-model keys
            raise SettingsError(f"Settings.budget {dict(self.budget)!r}: {problem}")
        object.__setattr__(self, "budget", dict(self.budget))
        if self.batch_size < 1 or self.max_in_flight < 1 or self.live_report_every < 1:
            raise SettingsError("Settings: batch_size, max_in_flight, live_report_every >= 1")
        if self.batch_wait_s < 0 or self.output_timeout_s <= 0 or self.metrics_every_s <= 0:
            raise SettingsError("Settings: batch_wait_s >= 0, timeouts and intervals > 0")
        if self.model_threads is not None and self.model_threads < 1:
            raise SettingsError(f"Settings.model_threads {self.model_threads}: use >= 1 or None")
