"""The trainer's pure logic: collect probe-frame outputs, train links, save a linkstore version.

A saved version is self-contained: links, ensembles, priors, the validation outputs the
controller needs to score any active set, and the model and link costs measured while training.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mlink.linkstore.budget import typical_ms
from mlink.linkstore.bundle import make_bundle
from mlink.linkstore.crossfit import TrainMap, fit_and_score
from mlink.linkstore.ensemble import EnsembleKind
from mlink.linkstore.store import LinkStore
from mlink.linkstore.streamfit import Sample, fit_stream
from mlink.linkstore.training import TrainConfig
from mlink.operators.recent import RecentIds
from mlink.topics.records import FrameResult
from mlink.topics.specs import OutputSpec, SpecError


class LinkTrainer:
    """Buffers training pairs and decides when to (re)train."""

    def __init__(
        self,
        specs: Mapping[str, OutputSpec],
        store: LinkStore,
        config: TrainConfig,
        warmup_frames: int,
        retrain_every: int = 0,
        ensemble: EnsembleKind = "weighted",
        window: int = 5000,
        stream: bool = False,
        cascades: bool = False,
        balance_streams: bool = True,
    ) -> None:
        self.specs = dict(specs)
        self.store = store
        self.config = config
        self.warmup_frames = warmup_frames
        self.retrain_every = retrain_every
        self.ensemble = ensemble
        self.samples: deque[dict[str, np.ndarray]] = deque(maxlen=window)
        self.streams: deque[str] = deque(maxlen=window)  # each sample's stream, for cross-fitting
        self.seqs: deque[int] = deque(maxlen=window)  # and its place in it, for stream synthesis
        self.emitted: deque[float] = deque(maxlen=window)  # when: a batch's share it (fill)
        self.stream = stream
        self.cascades = cascades
        self.balance_streams = balance_streams
        self.call_ms: dict[str, deque[float]] = {m: deque(maxlen=window) for m in self.specs}
        self.seen = RecentIds(4 * window)
        self.new_since_training = 0
        self.trained_versions: list[int] = []
        self.rejected = 0
        # the highest version the control log has named: a new one is numbered above it, also
        # by a store that was lost or replaced and numbers from 1 again
        self.number_after = 0

    def add(self, result: FrameResult, new: bool = True) -> bool:
        """Add one probe result (all models executed); duplicates (redelivery) are ignored, and
        a sample whose outputs break their specs is counted in ``rejected`` and dropped.
        ``new``: it counts towards the next retrain (not a sample the worker that held the
        samples partition before had, read back: :mod:`~mlink.operators.sample_history`)."""
        if result.frame_id in self.seen:
            return False
        by_model = {r.model: r for r in result.results}
        if set(by_model) != set(self.specs) or any(
            r.status != "executed" for r in by_model.values()
        ):
            return False
        try:  # one invalid sample would fail every retrain that includes it
            sample = {m: spec.validate(by_model[m].output, m) for m, spec in self.specs.items()}
        except SpecError:
            self.rejected += 1
            return False
        self.seen.add(result.frame_id)
        self.samples.append(sample)
        self.streams.append(result.stream_id)
        self.seqs.append(result.seq)
        self.emitted.append(result.emitted_at)
        for m, r in by_model.items():
            cost = r.cost_ms
            if cost is not None and 0.0 <= cost < math.inf:
                self.call_ms[m].append(cost)
        self.new_since_training += new
        return True

    def ready(self, relearn: int | None = None) -> bool:
        """Whether to train now. ``relearn``: the links in force, up to this version, were
        lost with their store and the pipeline runs every model again: train once from the
        buffer, as at the first warm-up, unless a version above it is already trained.

        A retrain also waits for a warm-up's worth of samples: a worker that took the samples
        partition over holds only the probes since, and would replace links trained on the
        whole buffer of the worker before it with links trained on ``retrain_every`` probes."""
        enough = len(self.samples) >= self.warmup_frames
        if relearn is not None:
            return max(self.trained_versions, default=0) <= relearn and enough
        if not self.trained_versions:
            return enough
        return self.retrain_every > 0 and self.new_since_training >= self.retrain_every and enough

    def batch_fill(self) -> int:
        """How many frames the worker's batches held when the buffered samples' costs were
        measured: a batch's results share their ``emitted_at``, so the median sample's count
        of samples emitted with it (every warm-up frame is a sample; after the warm-up only
        probes are, and the figure falls towards 1, the price of a frame alone)."""
        if not self.emitted:
            return 1
        counts = Counter(self.emitted)
        return max(1, int(np.median([counts[at] for at in self.emitted])))

    def measured_costs(self) -> dict[str, dict[str, float]]:
        return {m: {"ms": typical_ms(v)} for m, v in self.call_ms.items() if v}

    def training_outputs(self) -> dict[str, list[np.ndarray]]:
        """Every buffered sample, per model (what :func:`train_bundle` trains on)."""
        return {m: [s[m] for s in self.samples] for m in self.specs}

    def training_groups(self) -> list[str]:
        """The stream of every buffered sample, aligned with :meth:`training_outputs`."""
        return list(self.streams)

    def training_seqs(self) -> list[int] | None:
        """Each buffered sample's sequence number, when the links are fitted for streams."""
        return list(self.seqs) if self.stream else None

    def saved(self, version: int, taken: int | None = None, quick: bool = False) -> int:
        """Note a version trained from this buffer (here, or in a training process); ``taken``:
        the new samples it was trained on (:attr:`new_since_training` when its job was taken).
        Those that came while it trained still count towards the next retrain. A quick first
        version (``quick``) is not counted: the full links of the same samples are still owed,
        and a full training that fails is retried as a first one is."""
        if quick:
            return version
        self.trained_versions.append(version)
        left = 0 if taken is None else self.new_since_training - taken
        self.new_since_training = max(0, left)
        return version

    def announced(self, latest: int | None, quick: bool = False) -> None:
        """Note the newest version the control log announced (``ControlState.latest_links``):
        the trainer agent calls it before each sample. One above every version this buffer
        trained was trained by the worker that held the samples partition before this one took
        it over (a handover, at any time after this worker started). It counts as trained:
        with ``retrain_every`` 0 no second version is trained, and otherwise the new probes are
        counted from it (those this buffer got before are not new to it; those the other worker
        got are not here). A quick first version (``quick``, ``links.first_epochs``) does not
        count: the worker that trained it stopped before the full links, and this one trains
        them once it holds ``warmup_frames`` samples."""
        if quick:
            return
        if latest is not None and latest > max(self.trained_versions, default=0):
            self.trained_versions.append(latest)
            self.new_since_training = 0


def train_bundle(
    specs: Mapping[str, OutputSpec],
    outputs: Mapping[str, Sequence[Any]],
    config: TrainConfig,
    ensemble: EnsembleKind,
    measured_costs: Mapping[str, Mapping[str, float]],
    groups: Sequence[str] | None = None,
    seqs: Sequence[int] | None = None,
    *,
    cascades: bool = False,
    balance_streams: bool = True,
    fill: int = 1,
    train_map: TrainMap = map,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Train links on aligned outputs and cross-fit the oracle plans are scored on (``groups``:
    each sample's stream); the bundle a linkstore version holds (tensors, meta). With ``seqs``
    (each sample's place in its stream) it also fits stream synthesis: memory and detector
    modes, scored by frames since a model's last run, and with ``cascades`` the ``gate`` mode;
    ``balance_streams`` weighs every stream the same in its estimates (``LinkSettings``);
    ``fill``: the frames a worker's batch held when the samples' costs were measured
    (:meth:`LinkTrainer.batch_fill`); ``train_map`` trains the cross-fitted link sets (in
    parallel with an executor's ``map``: :func:`~mlink.linkstore.crossfit.cross_fit`)."""
    fit = fit_and_score(specs, outputs, config, ensemble, groups=groups, train_map=train_map)
    stream = None
    if seqs is not None:
        if groups is None or len(groups) != len(seqs):
            raise ValueError("stream synthesis needs each sample's stream and seq (groups, seqs)")
        samples = [
            Sample(g, int(q), {m: outputs[m][i] for m in specs})
            for i, (g, q) in enumerate(zip(groups, seqs, strict=True))
        ]
        stream = fit_stream(specs, samples, gates=cascades, balanced=balance_streams)
        stream.links.linkset = fit.linkset
    return make_bundle(fit, outputs, measured_costs, stream, fill=fill)
