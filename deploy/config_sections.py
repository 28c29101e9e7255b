"""The sections of a pipeline config (models, source, budget, links, topics, runtime, limits).

Each setting is documented where it is declared; :mod:`mlink.deploy.config` assembles them into a
:class:`~mlink.deploy.config.PipelineConfig` and loads it from YAML.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlink.linkstore.budget import resolve_budget
from mlink.linkstore.crossfit import MIN_TRAIN
from mlink.linkstore.schedule import MAX_PROBE_EVERY
from mlink.linkstore.training import TrainConfig
from mlink.operators.model_settings import IsolationSettings, ModelFactory, import_hint
from mlink.operators.settings import Model
from mlink.topics.limits import DEFAULT_LIMITS, Limits
from mlink.topics.names import TopicNames
from mlink.topics.specs import OutputSpec, SpecError, spec_from_dict

__all__ = [
    "BudgetConfig",
    "ConfigError",
    "Cost",
    "IsolationConfig",
    "LimitsConfig",
    "LinksConfig",
    "ModelConfig",
    "RuntimeConfig",
    "SourceConfig",
    "StrictSection",
    "TopicsConfig",
    "load_object",
]


class ConfigError(ValueError):
    """The pipeline config is invalid; the message names the key and what is allowed."""


class StrictSection(BaseModel):
    """A config section: unknown keys are errors (a typo must not pass silently), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load_object(path: str) -> Any:
    """Import ``"package.module:attribute"`` (the form every factory in a config uses)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"import path {path!r} must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} of {path!r}: {exc}{import_hint(path, exc)}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


class Cost(StrictSection):
    """What running a model costs per frame; when omitted it is measured live."""

    ms: float | None = Field(None, gt=0, description="CPU/GPU milliseconds per frame")
    memory_mb: float | None = Field(None, ge=0, description="resident model memory in MB")

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("ms", self.ms), ("memory_mb", self.memory_mb)) if v is not None}


class IsolationConfig(StrictSection):
    """Run the model in child processes: a leak, a hang or a segfault costs a restart of this
    model (with backoff), not the worker (see ``mlink.operators.model_settings``)."""

    processes: int = Field(1, ge=1, description="child processes serving this model")
    start_method: Literal["spawn", "forkserver"] = "spawn"
    max_rss_mb: float | None = Field(None, gt=0, description="restart a child above this RSS")
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    backoff_reset_s: float = Field(60.0, ge=0)
    start_timeout_s: float = Field(120.0, gt=0)
    torch_threads: int | None = Field(None, ge=1)

    def settings(self) -> IsolationSettings:
        return IsolationSettings(**self.model_dump())


class ModelConfig(StrictSection):
    """One black-box model: a factory returning ``callable(frame: np.ndarray) -> output``."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]
    factory: str = Field(description="'package.module:callable' returning the model callable")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword args of the factory")
    output: dict[str, Any] = Field(description="output spec, e.g. {kind: vector, size: 10, ...}")
    cost: Cost | None = None
    batch: bool = Field(
        False, description="the callable also accepts a batch (n, ...) and returns (n, ...)"
    )
    timeout_s: float = Field(
        60.0, gt=0, description="a call taking longer yields an error output; model unhealthy"
    )
    isolation: IsolationConfig | None = Field(
        None, description="run in child processes (None: on a thread of the worker)"
    )

    @field_validator("output")
    @classmethod
    def _valid_spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            spec_from_dict(value)
        except SpecError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @property
    def spec(self) -> OutputSpec:
        return spec_from_dict(self.output)

    def operator_model(self) -> Model:
        """This model as the operators take it (built lazily in each worker)."""
        return Model(
            name=self.name,
            spec=self.spec,
            build=ModelFactory(self.factory, dict(self.args)),
            batch=self.batch,
            cost=self.cost.as_dict() if self.cost else {},
            timeout_s=self.timeout_s,
            isolation=self.isolation.settings() if self.isolation else None,
        )

    def build(self) -> Callable[[Any], Any]:
        """Instantiate the black box (imports user code; call it once per worker)."""
        factory = load_object(self.factory)
        if not callable(factory):
            raise ConfigError(f"models[{self.name}].factory {self.factory!r} is not callable")
        try:
            _bind_args(factory, self.args)
        except TypeError as exc:  # a misspelt or missing argument: the config's fault
            raise ConfigError(
                f"models[{self.name}]: factory {self.factory!r} does not take args "
                f"{dict(self.args)}: {exc}"
            ) from None
        except ValueError:  # no signature to check (some builtins): the call will tell
            pass
        model = factory(**self.args)
        if not callable(model):
            raise ConfigError(
                f"models[{self.name}]: factory {self.factory!r} returned {type(model).__name__}, "
                "not a callable mapping a frame to an output"
            )
        return model


def _bind_args(factory: Callable[..., Any], args: dict[str, Any]) -> None:
    """TypeError when ``factory(**args)`` cannot bind. The callable's own signature (a
    functools.wraps decorator may take more args); for a class also its ``__init__``'s, since a
    ``__new__(cls, *args, **kwargs)`` takes anything and hides a misspelt argument until the
    worker builds the model."""
    inspect.signature(factory, follow_wrapped=False).bind(**args)
    if not isinstance(factory, type) or type(factory).__call__ is not type.__call__:
        return  # not a class, or a metaclass's __call__ decides what reaches __init__
    new, init = factory.__new__, factory.__init__
    if new is object.__new__ or init is object.__init__:
        return  # the signature just bound was __init__'s (or there is no __init__ to call)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(new).parameters.values()
    )
    if takes_any:  # __new__(cls, *args, **kwargs) hides what __init__ takes
        inspect.signature(init, follow_wrapped=False).bind(None, **args)


class SourceConfig(StrictSection):
    """Where frames come from. Exactly one of ``videos``, ``images``, ``factory``, ``topic``."""

    videos: list[str] | None = Field(None, description="video files, each one stream")
    images: str | None = Field(None, description="a glob of image files, one stream")
    factory: str | None = Field(
        None, description="'module:callable' yielding frames or (stream_id, frame) pairs"
    )
    args: dict[str, Any] = Field(default_factory=dict, description="keyword args of the factory")
    topic: str | None = Field(
        None, description="consume frames already on this Kafka topic (ours or a camera's)"
    )
    format: Literal["frame", "image"] = Field(
        "frame",
        description="values of `topic`: our Frame envelope, or one encoded JPEG/PNG image each",
    )
    encoding: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(90, ge=1, le=100)
    limit: int | None = Field(None, ge=1, description="stop after this many frames")
    rate: float | None = Field(
        None, gt=0, description="frames per second; None = as fast as possible"
    )
    stream_id: str = Field("stream", description="stream id for image globs and bare frames")

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceConfig:
        given = [k for k in ("videos", "images", "factory", "topic") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of videos, images, factory, topic (got {given or 'none'})"
            )
        return self


class BudgetConfig(StrictSection):
    """Resource limits for the active set; at least one bound. Fractions are of running all."""

    ms: float | None = Field(None, gt=0, description="per-frame compute of active models + links")
    memory_mb: float | None = Field(None, gt=0, description="memory of active models + links")
    fraction: float | None = Field(
        None, gt=0, le=1, description="ms budget as a share of running every model"
    )
    target_agreement: float | None = Field(
        None,
        gt=0,
        le=1,
        description="accuracy target: alone, the cheapest plan whose every model is expected to "
        "agree at least this much with its real output; with a compute bound, the most "
        "accurate plan within the bound that meets it",
    )
    targets: dict[str, float] = Field(
        default_factory=dict,
        description="per-model accuracy targets (override target_agreement); with a compute "
        "bound they are floors, and the bound is spent on every model",
    )

    @model_validator(mode="after")
    def _some_bound(self) -> BudgetConfig:
        if (
            self.ms is None
            and self.memory_mb is None
            and self.fraction is None
            and self.target_agreement is None
            and not self.targets
        ):
            raise ValueError("set at least one of ms, memory_mb, fraction, target_agreement")
        for model, target in self.targets.items():
            if not 0 < target <= 1:
                raise ValueError(f"targets[{model!r}] = {target}; it must lie in (0, 1]")
        if self.ms is not None and self.fraction is not None:
            raise ValueError("set either ms or fraction, not both")
        return self

    def limits(self) -> dict[str, float]:
        """The bounds that are set, as :func:`mlink.linkstore.budget.resolve_budget` takes them."""
        fields = (("ms", self.ms), ("fraction", self.fraction), ("memory_mb", self.memory_mb))
        return {k: v for k, v in fields if v is not None}

    def resolve(self, full_costs: dict[str, float]) -> dict[str, float]:
        """Concrete limits, turning ``fraction`` into ms of the full cost ``full_costs["ms"]``."""
        return resolve_budget(self.limits(), full_costs.get("ms", 0.0))


class LinksConfig(StrictSection):
    """How links are trained and kept."""

    store: str = Field("linkstore-data", description="linkstore directory (shared by workers)")
    warmup_frames: int = Field(
        60,
        ge=MIN_TRAIN,  # the first links are cross-fitted: two folds of 4 frames
        description="frames on which every model runs before the first links",
    )
    probe_every: int = Field(
        20,
        ge=0,
        le=MAX_PROBE_EVERY,
        description="every Nth frame runs all models (link data, live agreement); 0=off",
    )
    retrain_every: int = Field(
        0,
        ge=0,
        description="retrain after this many new probe frames, with warmup_frames samples "
        "buffered (a worker that took the trainer over holds only the probes since); "
        "0 = train once",
    )
    keep_versions: int = Field(
        32,
        ge=0,
        description="newest link versions kept after each retrain, besides those in force "
        "and pinned; 0 = all",
    )
    ensemble: Literal["weighted", "fusion"] = "weighted"
    selector: Literal["exact", "greedy", "lookahead", "auto"] = "auto"
    epochs: int = Field(100, ge=1)
    ensemble_epochs: int | None = Field(
        None,
        ge=1,
        description="epochs of each model's link ensemble, trained after its links on the "
        "held-out frames (default: the same as epochs)",
    )
    first_epochs: int = Field(
        5,
        ge=0,
        description="stream synthesis: a pipeline's first links train this many epochs (links "
        "and ensembles), which ends the warm-up's hold in seconds; a full training on the same "
        "samples follows at once and replaces them (0: the first links train in full)",
    )
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    val_fraction: float = Field(0.2, gt=0, lt=1)
    min_hidden: int = Field(16, ge=0)
    hold_s: float = Field(
        60.0,
        ge=0,
        description="after its warm-up frames, wait this long for the first links (and for "
        "this worker's own training of them, up to 5x as long)",
    )
    train_in_child: bool = Field(
        True, description="train in a lower-priority child process (False: on a thread)"
    )
    training_processes: int = Field(
        1,
        ge=0,
        description="processes that train the cross-fitted link sets side by side, with "
        "train_in_child (the links come out the same): 1 is the child alone, 0 one per CPU, "
        "at most 4; each imports torch, which only long trainings pay back",
    )
    stream: bool = Field(
        False,
        description="plan per frame of a stream: each model on its own period, synthesized in "
        "between from its last output, a detector that runs or the links (stream synthesis)",
    )
    probe_stride: int = Field(
        0,
        ge=0,
        le=MAX_PROBE_EVERY,
        description="move each block's probe frame by this much per block (0: first)",
    )
    report_every: int = Field(
        5,
        ge=1,
        description="probe frames per live-agreement report on the control topic (what "
        "`mlink status` and the forecast with probes see, and when a missed target re-plans)",
    )
    cascades: bool = Field(
        False,
        description="stream synthesis: also let a box model run only where another box model "
        "that runs finds anything (a cascade)",
    )
    balance_streams: bool = Field(
        True,
        description="stream synthesis: weigh every stream the same in the trainer's estimates, "
        "however many warm-up frames it sent (false: every frame, for cameras at very "
        "different frame rates)",
    )
    relearn_after_s: float = Field(
        60.0,
        ge=0,
        description="when the store has not held the link version in force for this long "
        "(lost or replaced), run every model and train new links (0: never)",
    )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            ensemble_epochs=self.ensemble_epochs or self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            val_fraction=self.val_fraction,
            min_hidden=self.min_hidden,
        )


class TopicsConfig(StrictSection):
    """Topic names (``prefix``.frames, ...) and partitioning."""

    prefix: str = Field("mlink", pattern=r"^[A-Za-z0-9._\-]+$")
    partitions: int = Field(4, ge=1, description="partitions of frames, outputs and results")
    replication: int = Field(1, ge=1)

    def names(self) -> TopicNames:
        return TopicNames.with_prefix(self.prefix)


class RuntimeConfig(StrictSection):
    """Worker behaviour."""

    output_timeout_s: float = Field(
        10.0, gt=0, description="emit a degraded result when an output is this late"
    )
    batch_size: int = Field(8, ge=1, description="frames per model call for batch models")
    batch_wait_s: float = Field(0.02, ge=0, description="max wait to fill a batch")
    session_timeout_s: float = Field(10.0, gt=0, description="Kafka group session timeout")
    stop_timeout_s: float = Field(
        15.0,
        gt=0,
        description="a worker still stopping this long after SIGTERM exits anyway (with the "
        "broker gone faust's stop takes about a minute; orchestrators kill sooner)",
    )
    workers: int = Field(1, ge=1, description="worker processes that `mlink run` starts")
    max_in_flight: int = Field(
        64, ge=1, description="split layout: frames a planner may have planned but not answered"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus endpoint per worker; None off, 0 any port"
    )
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    json_logs: bool = Field(False, description="worker logs as one JSON object per line")
    model_threads: int | None = Field(
        1,
        ge=1,
        description="OpenCV's and torch's intra-op threads in a worker, whose models run side "
        "by side (1: each model's cost is its own thread's CPU time; None: library defaults)",
    )


class LimitsConfig(StrictSection):
    """Resource bounds, one setting each, applied to every client, topic and decoder
    (:class:`mlink.topics.limits.Limits`)."""

    max_record_bytes: int = Field(
        DEFAULT_LIMITS.max_record_bytes, ge=65_536, description="largest record on any topic"
    )
    max_pixels: int = Field(
        DEFAULT_LIMITS.max_pixels, ge=1, description="largest image (W x H) a frame may decode to"
    )
    image_cache_bytes: int = Field(DEFAULT_LIMITS.image_cache_bytes, ge=0)
    ref_root: str | None = Field(
        None, description="'ref' frames may name files under this directory only; None: refused"
    )

    def limits(self) -> Limits:
        return Limits(**self.model_dump())
