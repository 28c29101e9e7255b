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

from mlink.linkstore.budget import resolve_budget
from mlink.linkstore.training import TrainConfig
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
    topic: str | None = Field(None, description="consume Frame records already on this topic")
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

    @model_validator(mode="after")
    def _some_bound(self) -> BudgetConfig:
        if self.ms is None and self.memory_mb is None and self.fraction is None:
            raise ValueError("set at least one of ms, memory_mb, fraction")
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
