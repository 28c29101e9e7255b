"""A pipeline config's models and source as an offline :class:`~mlink.eval.workload.Workload`.

Every configured model runs on every frame of the config's source once; outputs and measured costs
go to the shared output cache (:mod:`mlink.eval.outputs`), so the bench and the run summary see the
same reference.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlink.deploy.config import PipelineConfig
from mlink.deploy.source import iter_source
from mlink.eval.memory import single_threaded
from mlink.eval.outputs import DEFAULT_CACHE, collect_workload
from mlink.eval.workload import Workload

__all__ = ["SourceFrames", "config_models", "load_workload", "measure_model_ms"]


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


def measure_model_ms(config: PipelineConfig, n_frames: int, sample: int = 40) -> dict[str, float]:
    """Each model's mean ms per call, timed now on ``sample`` frames spread over the source.

    For a cost table measured under the same conditions as everything else a run measures (the
    links, the features, the CNN): on a shared machine, costs cached minutes or days ago under
    another load are not comparable with them. One thread, one untimed warm-up call per model, the
    models interleaved frame by frame so a load change hits all of them alike.
    """
    models, _ = config_models(config)
    step = max(1, n_frames // max(1, sample))
    frames = [f for i, (_, f) in enumerate(SourceFrames(config)) if i % step == 0][:sample]
    times: dict[str, list[float]] = {m: [] for m in models}
    with single_threaded():
        for fn, _ in models.values():
            fn(frames[0])
        for frame in frames:
            for m, (fn, _) in models.items():
                start = time.perf_counter()
                fn(frame)
                times[m].append((time.perf_counter() - start) * 1000.0)
    return {m: float(np.mean(t)) for m, t in times.items()}
