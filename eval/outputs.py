"""Collect every model's real outputs on a frame source, with measured costs, cached on disk.

Offline experiments (:mod:`mlink.eval.experiment`) need every model's output on every frame
plus what each model costs. Running real detectors over real video takes minutes, so results are
cached per model under a key of (what the model is, which frames it saw): a rerun takes seconds,
adding a model computes only that model, and changing a model's arguments or the frames recomputes
exactly what changed.

How costs are measured, and why:

- ``ms`` is the **mean** wall time of one call on one frame (``time.perf_counter`` around the
  call only; validation and caching are not timed). The mean, not the median, because selection
  treats costs as additive per-frame compute, and a workload's total compute is ``n * mean``: with
  frames of very different sizes in one workload (720p next to QCIF video) the median would hide
  the expensive frames. One untimed warm-up call on the first frame absorbs one-off lazy set-up.
  Per-frame times are cached too, so other statistics are available without recomputing
  (:attr:`Collection.times_ms`).
- Calls run **single-threaded** (``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)`` when
  those libraries are loaded; restored afterwards), for every model alike. The machine is shared
  and costs must add up: a model that grabs every core looks cheap alone but is not when several
  models share a worker.
- ``memory_mb`` is the resident memory a model adds to a fresh process, on the largest frame of
  the source (:mod:`mlink.eval.memory`).
- Each entry records when it was measured, so a report can say which cost table it used.

The cache holds one ``.npz`` per (model key, frames digest) (:mod:`mlink.eval.output_cache`).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlink.eval.memory import measure_memory_mb, single_threaded
from mlink.eval.output_cache import FORMAT, CacheEntry, entry_path, read_entry, write_entry
from mlink.eval.workload import Workload
from mlink.topics.specs import OutputSpec, SpecError

__all__ = [
    "DEFAULT_CACHE",
    "CacheEntry",
    "Collection",
    "ModelCallError",
    "ModelRunError",
    "OutputValidationError",
    "collect_outputs",
    "collect_workload",
    "default_model_key",
    "frames_digest",
    "timed_output",
    "warm_up",
]

Model = Callable[[np.ndarray], Any]
DEFAULT_CACHE = Path(".mlink-cache")


#: What a model error on the reference run adds: where it comes from, and how to go on without it.
REFERENCE_HINT = (
    "`mlink bench` and `mlink run`'s comparison (off with --no-compare) run every model on every "
    "frame"
)


class ModelRunError(ValueError):
    """A model failed the reference run (raised, or answered outside its spec): the user fixes
    the model or its spec, and ``mlink`` says so without a traceback. Not a
    :class:`~mlink.deploy.config.ConfigError`: reading frames must not import the config's
    dependencies (torch)."""


class OutputValidationError(ModelRunError):
    """A model's output on one frame does not match its spec; nothing is cached for that model."""

    def __init__(
        self, model: str, index: int, stream: str, detail: str, *, hint: str | None = None
    ) -> None:
        self.model = model
        self.index = index
        self.stream = stream
        super().__init__(
            f"model {model!r} gave an invalid output on frame {index} (stream {stream!r}): "
            f"{detail}. Fix the model or its output spec; "
            f"{hint or f'nothing was cached for {model!r} ({REFERENCE_HINT})'}."
        )


class ModelCallError(ModelRunError):
    """A model raised on one frame of the reference run; nothing is cached for that model."""

    def __init__(
        self, model: str, index: int | None, exc: BaseException, *, hint: str | None = None
    ) -> None:
        self.model = model
        self.index = index  # None: the untimed memory probe on the source's largest frame
        where = "the largest frame" if index is None else f"frame {index}"
        super().__init__(
            f"model {model!r} raised {type(exc).__name__}: {exc} on {where}; "
            f"{hint or f'nothing was cached for {model!r} ({REFERENCE_HINT})'}."
        )


@dataclass(slots=True)
class Collection:
    """What :func:`collect_outputs` produced: the workload plus per-frame times and cache facts."""

    workload: Workload
    times_ms: dict[str, np.ndarray]
    frames_digest: str
    cache_files: dict[str, Path]
    cache_hits: list[str]
    computed: list[str]


# ---------------------------------------------------------------------------------- frames


class _FrameHasher:
    """sha256 over every frame's shape, dtype and bytes, in order (stream ids are not included:
    outputs depend on pixels only)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(FORMAT.encode())
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        arr = np.ascontiguousarray(frame)
        self._h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
        self._h.update(memoryview(arr).cast("B"))
        self.count += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def frames_digest(frames: Iterable[tuple[str, np.ndarray]]) -> str:
    """The cache's identity of a frame source (sha256 over all frames' shapes, dtypes, bytes)."""
    hasher = _FrameHasher()
    for _, frame in frames:
        hasher.add(np.asarray(frame))
    return hasher.hexdigest()


def _check_frame(item: Any, index: int) -> tuple[str, np.ndarray]:
    try:
        stream, frame = item
    except (TypeError, ValueError):
        raise TypeError(
            f"frame {index}: the frame source must yield (stream_id, frame) pairs, "
            f"got {type(item).__name__}"
        ) from None
    return str(stream), np.asarray(frame)


# ---------------------------------------------------------------------------------- keys


def default_model_key(name: str, model: Model) -> str:
    """``model.model_key`` when the model provides one, else name + callable + partial args.

    Anything a model's behaviour depends on that is not in this key (state captured in a closure,
    weights loaded from a file) must be given through ``model_keys``, or the cache cannot notice
    that it changed.
    """
    key = getattr(model, "model_key", None)
    if isinstance(key, str) and key:
        return key
    target: Any = model
    args = ""
    if isinstance(model, functools.partial):
        target = model.func
        args = f"{model.args!r}{sorted(model.keywords.items())!r}"
    if not hasattr(target, "__qualname__"):
        target = type(target)
    return f"{name}|{getattr(target, '__module__', '?')}.{target.__qualname__}{args}"


# ---------------------------------------------------------------------------------- collecting


def collect_outputs(
    name: str,
    models: Mapping[str, tuple[Model, OutputSpec]],
    frames: Iterable[tuple[str, np.ndarray]],
    cache_dir: Path | None = DEFAULT_CACHE,
    model_keys: Mapping[str, str] | None = None,
    progress: bool = True,
) -> Collection:
    """Like :func:`collect_workload`, also returning per-frame times and what the cache did."""
    if not models:
        raise ValueError("collect_outputs: no models given; pass {name: (callable, spec)}")
    model_keys = dict(model_keys or {})
    unknown = sorted(set(model_keys) - set(models))
    if unknown:
        raise ValueError(f"model_keys names models {unknown} that are not in models")
    keys = {m: model_keys.get(m) or default_model_key(m, fn) for m, (fn, _) in models.items()}

    # Pass 1: hash the frames (the cache key), remember stream ids and the largest frame.
    reiterable = iter(frames) is not frames
    kept: list[tuple[str, np.ndarray]] | None = None if reiterable else []
    hasher = _FrameHasher()
    streams: list[str] = []
    largest: np.ndarray | None = None
    for i, item in enumerate(frames):
        stream, frame = _check_frame(item, i)
        hasher.add(frame)
        streams.append(stream)
        if largest is None or frame.nbytes > largest.nbytes:
            largest = frame.copy() if reiterable else frame
        if kept is not None:
            kept.append((stream, frame))
    if not streams or largest is None:
        raise ValueError(f"collect_outputs({name!r}): the frame source yielded no frames")
    digest = hasher.hexdigest()
    n = len(streams)

    entries: dict[str, CacheEntry] = {}
    paths: dict[str, Path] = {}
    for m, (_, spec) in models.items():
        if cache_dir is not None:
            paths[m] = entry_path(Path(cache_dir), m, keys[m], spec, digest)
            entry = read_entry(paths[m], keys[m], spec, digest)
            if entry is not None and len(entry.outputs) == n:
                entries[m] = entry
    hits = [m for m in models if m in entries]
    missing = [m for m in models if m not in entries]

    if missing:
        computed = _compute(
            name,
            {m: models[m] for m in missing},
            frames if kept is None else kept,
            n,
            digest,
            largest,
            progress,
        )
        for m in missing:
            entries[m] = computed[m]
            if cache_dir is not None:
                write_entry(paths[m], keys[m], models[m][1], digest, computed[m])

    workload = Workload(
        name=name,
        specs={m: spec for m, (_, spec) in models.items()},
        outputs={m: entries[m].outputs for m in models},
        costs={
            m: {"ms": float(np.mean(entries[m].times_ms)), "memory_mb": entries[m].memory_mb}
            for m in models
        },
        streams=streams,
        cost_source=cost_source([entries[m].measured_at for m in models]),
    )
    return Collection(
        workload=workload,
        times_ms={m: entries[m].times_ms for m in models},
        frames_digest=digest,
        cache_files=paths,
        cache_hits=hits,
        computed=missing,
    )


def _compute(
    name: str,
    models: Mapping[str, tuple[Model, OutputSpec]],
    frames: Iterable[tuple[str, np.ndarray]],
    n: int,
    digest: str,
    largest: np.ndarray,
    progress: bool,
) -> dict[str, CacheEntry]:
    """Pass 2: run the uncached models frame by frame, timing each call."""
    with single_threaded():
        memory = {m: _memory(fn, largest, m) for m, (fn, _) in models.items()}
    outputs: dict[str, list[np.ndarray]] = {m: [] for m in models}
    times = {m: np.zeros(n, dtype=np.float64) for m in models}
    hasher = _FrameHasher()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"{name}: {len(models)} model(s)", unit="frame")
    index = -1
    with single_threaded():
        try:
            for index, item in enumerate(frames):
                stream, frame = _check_frame(item, index)
                if index >= n:
                    break
                hasher.add(frame)
                for m, (fn, spec) in models.items():
                    if index == 0:
                        warm_up(fn, frame, m)
                    out, times[m][index] = timed_output(fn, spec, frame, m, index, stream)
                    outputs[m].append(out)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    if index + 1 != n or hasher.hexdigest() != digest:
        raise RuntimeError(
            f"collect_outputs({name!r}): the frame source gave different frames on its second "
            f"pass ({index + 1} frames, expected {n}); pass a deterministic, re-iterable source "
            "or a list"
        )
    now = time.time()
    return {m: CacheEntry(outputs[m], times[m], memory[m], now) for m in models}


def cost_source(measured_at: Iterable[float]) -> str:
    """How the cost table of a collected workload was made, and when."""
    days = sorted({time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) for t in measured_at})
    when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    return f"measured (mean ms per call, one thread, when the outputs were computed: {when})"


def timed_output(
    fn: Model,
    spec: OutputSpec,
    frame: np.ndarray,
    model: str,
    index: int,
    stream: str,
    hint: str | None = None,
) -> tuple[np.ndarray, float]:
    """One call of ``model`` on frame ``index``, validated against its spec, with the wall time
    of the call alone in ms. The one place a reference output is checked, so ``mlink check``
    fails a model with the very error the reference run would (``hint`` ends its message in
    place of what the reference run did not cache)."""
    start = time.perf_counter()
    out = _call(fn, frame, model, index, hint)
    ms = (time.perf_counter() - start) * 1000.0
    try:
        return spec.validate(out, model=model), ms
    except SpecError as exc:
        raise OutputValidationError(model, index, stream, str(exc), hint=hint) from exc


def warm_up(fn: Model, frame: np.ndarray, model: str, hint: str | None = None) -> None:
    """The untimed first call on frame 0 that absorbs a model's one-off lazy set-up."""
    _call(fn, frame, model, 0, hint)


def _call(fn: Model, frame: np.ndarray, model: str, index: int, hint: str | None = None) -> Any:
    try:
        return fn(frame)
    except Exception as exc:
        raise ModelCallError(model, index, exc, hint=hint) from exc


def _memory(fn: Model, largest: np.ndarray, model: str) -> float:
    """The model's memory, measured with one call on the largest frame (before any timed one)."""
    try:
        return measure_memory_mb(fn, largest, label=default_model_key(model, fn))
    except Exception as exc:  # the model itself raised (the child probe only warns)
        raise ModelCallError(model, None, exc) from exc


def collect_workload(
    name: str,
    models: Mapping[str, tuple[Model, OutputSpec]],
    frames: Iterable[tuple[str, np.ndarray]],
    cache_dir: Path | None = DEFAULT_CACHE,
    model_keys: Mapping[str, str] | None = None,
    progress: bool = True,
) -> Workload:
    """Every model's validated output on every frame, with measured ``ms`` and ``memory_mb``.

    ``frames`` yields ``(stream_id, frame)`` in stream time order. A re-iterable source (a list,
    or an object whose ``__iter__`` starts over) is read twice -- once to hash, once to compute --
    so frames need not all fit in memory; a one-shot iterator is held in memory instead.

    ``cache_dir=None`` disables the cache. A model's cache key is ``model_keys[name]``, else its
    ``model_key`` attribute, else its name and callable (see :func:`default_model_key`), together
    with its output spec and the digest of the frames.
    """
    return collect_outputs(name, models, frames, cache_dir, model_keys, progress).workload
