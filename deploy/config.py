"""The pipeline config: one YAML file describes a whole MLink-stream deployment.

Validated with pydantic on load; an error names the key path and what is allowed, so a typo in a
config fails at ``mlink run`` and not twenty seconds later inside a worker. Every setting is
documented where it is declared. Environment variables are read in one place only:
``MLINK_BROKER`` overrides ``broker`` (so a deployment can point an unchanged config at a real
Kafka cluster).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlink.deploy.security import SecurityConfig, kafka_python_kwargs
from mlink.linkstore.budget import resolve_budget
from mlink.linkstore.training import TrainConfig
from mlink.operators.model_settings import IsolationSettings, ModelFactory
from mlink.operators.settings import LinkSettings, Model, Settings
from mlink.topics.control import TARGET_PREFIX
from mlink.topics.limits import DEFAULT_LIMITS, Limits
from mlink.topics.names import TopicNames
from mlink.topics.specs import OutputSpec, SpecError, spec_from_dict


class ConfigError(ValueError):
    """The pipeline config is invalid; the message names the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def load_object(path: str) -> Any:
    """Import ``"package.module:attribute"`` (the form every factory in a config uses)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"import path {path!r} must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} of {path!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


class Cost(_Strict):
    """What running a model costs per frame; when omitted it is measured live."""

    ms: float | None = Field(None, gt=0, description="CPU/GPU milliseconds per frame")
    memory_mb: float | None = Field(None, ge=0, description="resident model memory in MB")

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("ms", self.ms), ("memory_mb", self.memory_mb)) if v is not None}


class IsolationConfig(_Strict):
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


class ModelConfig(_Strict):
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
        model = factory(**self.args)
        if not callable(model):
            raise ConfigError(
                f"models[{self.name}]: factory {self.factory!r} returned {type(model).__name__}, "
                "not a callable mapping a frame to an output"
            )
        return model


class SourceConfig(_Strict):
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


class BudgetConfig(_Strict):
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
        description="accuracy target: the cheapest plan whose every model is expected to agree "
        "at least this much with its real output (alone or with a compute bound)",
    )
    targets: dict[str, float] = Field(
        default_factory=dict, description="per-model accuracy targets (override target_agreement)"
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


class LinksConfig(_Strict):
    """How links are trained and kept."""

    store: str = Field("linkstore-data", description="linkstore directory (shared by workers)")
    warmup_frames: int = Field(
        60, ge=4, description="frames on which every model runs before the first links"
    )
    probe_every: int = Field(
        20, ge=0, description="every Nth frame runs all models (link data, live agreement); 0=off"
    )
    retrain_every: int = Field(
        0, ge=0, description="retrain after this many new probe frames; 0 = train once"
    )
    ensemble: Literal["weighted", "fusion"] = "weighted"
    selector: Literal["exact", "greedy", "lookahead", "auto"] = "auto"
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    val_fraction: float = Field(0.2, gt=0, lt=1)
    min_hidden: int = Field(16, ge=0)
    hold_s: float = Field(
        60.0, ge=0, description="after its warm-up frames, wait this long for the first links"
    )
    train_in_child: bool = Field(
        True, description="train in a lower-priority child process (False: on a thread)"
    )
    stream: bool = Field(
        False,
        description="plan per frame of a stream: each model on its own period, synthesized in "
        "between from its last output, a detector that runs or the links (stream synthesis)",
    )
    probe_stride: int = Field(
        0, ge=0, description="move each block's probe frame by this much per block (0: first)"
    )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            val_fraction=self.val_fraction,
            min_hidden=self.min_hidden,
        )


class TopicsConfig(_Strict):
    """Topic names (``prefix``.frames, ...) and partitioning."""

    prefix: str = Field("mlink", pattern=r"^[A-Za-z0-9._\-]+$")
    partitions: int = Field(4, ge=1, description="partitions of frames, outputs and results")
    replication: int = Field(1, ge=1)

    def names(self) -> TopicNames:
        return TopicNames.with_prefix(self.prefix)


class RuntimeConfig(_Strict):
    """Worker behaviour."""

    output_timeout_s: float = Field(
        10.0, gt=0, description="emit a degraded result when an output is this late"
    )
    batch_size: int = Field(8, ge=1, description="frames per model call for batch models")
    batch_wait_s: float = Field(0.02, ge=0, description="max wait to fill a batch")
    session_timeout_s: float = Field(10.0, gt=0, description="Kafka group session timeout")
    workers: int = Field(1, ge=1, description="worker processes that `mlink run` starts")
    max_in_flight: int = Field(
        64, ge=1, description="split layout: frames a planner may have planned but not answered"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus endpoint per worker; None off, 0 any port"
    )
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    json_logs: bool = Field(False, description="worker logs as one JSON object per line")


class LimitsConfig(_Strict):
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


class PipelineConfig(_Strict):
    """A whole pipeline; see ``deploy/configs/*.yaml`` for examples."""

    name: str = Field(pattern=r"^[A-Za-z0-9._\-]+$", description="app id / consumer group")
    broker: str | None = Field(None, description="bootstrap 'host:port'; None = embedded Tansu")
    source: SourceConfig
    models: list[ModelConfig] = Field(min_length=2)
    budget: BudgetConfig
    links: LinksConfig = LinksConfig()
    topics: TopicsConfig = TopicsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    limits: LimitsConfig = LimitsConfig()
    security: SecurityConfig = Field(
        SecurityConfig(), description="TLS/SASL of every Kafka client (mlink.deploy.security)"
    )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        return models

    @model_validator(mode="after")
    def _memory_is_declared(self) -> PipelineConfig:
        """Memory is not measured live (a worker cannot tell one model's share of its RSS), so a
        memory budget needs every model's memory declared."""
        if self.budget.memory_mb is not None:
            missing = [m.name for m in self.models if m.cost is None or m.cost.memory_mb is None]
            if missing:
                raise ValueError(
                    f"budget.memory_mb needs cost.memory_mb on every model; missing on {missing}"
                )
        unknown = sorted(set(self.budget.targets) - {m.name for m in self.models})
        if unknown:
            raise ValueError(f"budget.targets names unknown models {unknown}")
        return self

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model {name!r} in config {self.name}; models: {self.model_names}")

    def specs(self) -> dict[str, OutputSpec]:
        return {m.name: m.spec for m in self.models}

    def declared_costs(self) -> dict[str, dict[str, float]]:
        return {m.name: m.cost.as_dict() for m in self.models if m.cost is not None}

    def budget_dict(self) -> dict[str, float]:
        """The budget as the operators and the control topic carry it."""
        budget = self.budget.model_dump(exclude_none=True, exclude={"targets"})
        budget.update({f"{TARGET_PREFIX}{m}": t for m, t in self.budget.targets.items()})
        return budget

    def operator_settings(self) -> Settings:
        """The operators' settings for this pipeline (everything but the source and models)."""
        links, rt = self.links, self.runtime
        return Settings(
            name=self.name,
            budget=self.budget_dict(),
            topics=self.topics.names(),
            links=LinkSettings(
                store=links.store,
                warmup_frames=links.warmup_frames,
                probe_every=links.probe_every,
                retrain_every=links.retrain_every,
                ensemble=links.ensemble,
                selector=links.selector,
                train=links.train_config(),
                hold_s=links.hold_s,
                train_in_child=links.train_in_child,
                stream=links.stream,
                probe_stride=links.probe_stride,
            ),
            batch_size=rt.batch_size,
            batch_wait_s=rt.batch_wait_s,
            output_timeout_s=rt.output_timeout_s,
            max_in_flight=rt.max_in_flight,
            metrics_port=rt.metrics_port,
            metrics_host=rt.metrics_host,
            limits=self.limits.limits(),
        )

    def client_kwargs(self) -> dict[str, Any]:
        """TLS/SASL keyword arguments for every kafka-python client of this pipeline."""
        return kafka_python_kwargs(self.security)

    def producer_kwargs(self) -> dict[str, Any]:
        """Everything a kafka-python producer of this pipeline needs: security and sizes."""
        return {**self.client_kwargs(), **self.limits.limits().kafka_producer_kwargs()}

    def consumer_kwargs(self) -> dict[str, Any]:
        """Everything a kafka-python consumer of this pipeline needs: security and sizes."""
        return {**self.client_kwargs(), **self.limits.limits().kafka_consumer_kwargs()}

    def operator_models(self) -> list[Model]:
        return [m.operator_model() for m in self.models]


def _format_errors(exc: ValidationError, where: str) -> str:
    lines = [f"invalid pipeline config {where}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, where: str = "<dict>") -> PipelineConfig:
    """Validate a config mapping; ``MLINK_BROKER`` in the environment overrides ``broker``."""
    if not isinstance(data, dict):
        raise ConfigError(f"pipeline config {where} must be a mapping, got {type(data).__name__}")
    data = dict(data)
    if os.environ.get("MLINK_BROKER"):
        data["broker"] = os.environ["MLINK_BROKER"]
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, where)) from None


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and validate a YAML pipeline config."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pipeline config {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline config {p} is not valid YAML: {exc}") from exc
    return parse_config(data, str(p))


def with_broker(config: PipelineConfig, broker: str) -> PipelineConfig:
    return config.model_copy(update={"broker": broker})
