"""A pipeline config's models and source as an offline :class:`~mlink.eval.workload.Workload`.

Every configured model runs on every frame of the config's source once; outputs and measured costs
go to the shared output cache (:mod:`mlink.eval.outputs`), so the bench and the run summary see the
same reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlink.deploy.config import PipelineConfig
from mlink.deploy.source import iter_source
from mlink.eval.outputs import DEFAULT_CACHE, collect_workload
from mlink.eval.workload import Workload

__all__ = ["SourceFrames", "config_models", "load_workload"]


class SourceFrames:
    """The config's source as a re-iterable, so outputs are cached without holding all frames."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter_source(self.config.source)


def config_models(config: PipelineConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Built models with their output cache keys: the model's own ``model_key`` when it has one
    (so caches written by the workload modules are shared), else factory path + args."""
    models, keys = {}, {}
    for m in config.models:
        built = m.build()
        models[m.name] = (built, m.spec)
        own = getattr(built, "model_key", None)
        keys[m.name] = (
            own if isinstance(own, str) and own else f"{m.factory}:{sorted(m.args.items())}"
        )
    return models, keys


def load_workload(
    config: PipelineConfig, progress: bool = True, cache_dir: Path | None = DEFAULT_CACHE
) -> Workload:
    """Every configured model's real outputs and measured costs on the source (cached)."""
    models, keys = config_models(config)
    return collect_workload(
        config.name, models, SourceFrames(config), cache_dir, model_keys=keys, progress=progress
    )
