"""Agreement estimates that do not over-promise: score plans on samples no link or ensemble saw.

:meth:`LinkSet.train` fits the links on 80% of the samples, and on the other 20% picks each link's
best epoch and trains the ensembles. An oracle on those same 20% (:meth:`LinkSet.validation_oracle`)
scores the very samples the ensembles were fitted to, and with a few dozen samples the selector
then picks the plan whose estimate happens to be highest: predicted accuracy runs above what the
plan keeps on new frames. The schemes of :func:`fit_and_score`, all scoring samples that fitted
neither the links nor the ensembles that predict them:

- ``"crossfit"``: split each stream's samples into ``folds`` contiguous blocks; for each block
  train a link set (links *and* ensembles) on the other blocks and predict the block; pool the
  out-of-fold agreements over every sample. Contiguous, not random, rows: neighbouring frames of
  a video are near-duplicates, and a held-out row whose neighbours trained would flatter a link
  that memorised them. It asks how links carry over to other moments of the same streams.
- ``"streams"``: one fold per stream: every stream is scored by links that never saw it. It asks
  how links carry over to footage unlike their training data (harsher).
- ``"mixed"`` (the default): the mean of the two when there are at least two streams, else
  ``"crossfit"``. A stream's future is partly more of its past and partly new content; on the
  video workload crossfit alone over-promised by 5.5 points and streams alone under-promised
  faces by up to 24 (BENCHMARKS.md, "Selection that does not over-promise").
- ``"holdout"``: train on the first ``1 - 1/folds`` of each stream, score the rest; the link set
  that runs is exactly the one scored, but it learned from less data.
- ``"validation"``: the link set's own validation split (what selection used before; kept to
  compare, it over-promises).

For the cross-fitted schemes the link set that runs is trained on all samples, so it is scored by
link sets trained on less of its data (slightly pessimistic). At run time the trainer can keep the
fold link sets and held-out outputs in its bundle (:meth:`CrossFit.bundle_parts`) and the
controller rebuild the oracle from them (:func:`oracle_from_bundle`), so live selection scores
plans the same way as the bench.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mlink.linkstore.ensemble import EnsembleKind
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.oracle import AgreementOracle, SampleOracle
from mlink.linkstore.streamerror import stream_weights
from mlink.linkstore.training import TrainConfig
from mlink.topics.specs import BoxesSpec, OutputSpec, SequenceSpec, encode_batch

__all__ = [
    "MIN_FIT",
    "MIN_TRAIN",
    "SCHEMES",
    "CrossFit",
    "MixedOracle",
    "PooledOracle",
    "Scheme",
    "TooFewSamples",
    "TrainMap",
    "TrainTask",
    "contiguous_folds",
    "cross_fit",
    "fit_and_score",
    "oracle_from_bundle",
    "train_task",
    "trainable_folds",
]

Scheme = Literal["mixed", "crossfit", "streams", "holdout", "validation"]
SCHEMES: tuple[str, ...] = ("mixed", "crossfit", "streams", "holdout", "validation")
#: Fewest samples a fold's link set may train on (LinkSet.train then still has a validation row).
MIN_FIT = 4
MIN_TRAIN = 2 * MIN_FIT  # the fewest samples every cross-fit can train on (two folds of 4)


class TooFewSamples(ValueError):
    """A fold leaves fewer samples than a link needs to train on: the data, not the code, is
    short, so callers can say which of their knobs gives more (frames, a training share)."""


Outputs = Mapping[str, Sequence[Any]]
TrainTask = tuple[Mapping[str, OutputSpec], Outputs, TrainConfig, EnsembleKind]
"""What one link set of a cross-fit is trained from: specs, outputs, config, ensemble kind."""
TrainMap = Callable[[Callable[[TrainTask], LinkSet], Iterable[TrainTask]], Iterable[LinkSet]]
"""``map``, or an executor's ``map``: how the link sets of a cross-fit are trained."""


class PooledOracle(SampleOracle):
    """Agreement of any active set, pooled over several (link set, held-out samples) parts.

    Each part predicts only samples its link set never trained on; the pooled mean weighs every
    sample once, or by ``weights`` (one array per part, a weight per held-out sample).
    """

    def __init__(
        self, parts: Sequence[AgreementOracle], weights: Sequence[np.ndarray] | None = None
    ) -> None:
        if not parts:
            raise ValueError("PooledOracle needs at least one part")
        super().__init__()
        self.parts = list(parts)
        self.models = parts[0].linkset.models
        self.weights: np.ndarray | None = None
        if weights is not None:
            sizes = [len(p.outputs[self.models[0]]) for p in self.parts]
            if [len(w) for w in weights] != sizes:
                raise ValueError(
                    f"weights of {[len(w) for w in weights]} samples for parts of {sizes}"
                )
            self.weights = np.concatenate([np.asarray(w, dtype=np.float64) for w in weights])

    @property
    def n_samples(self) -> int:
        return sum(len(p.outputs[self.models[0]]) for p in self.parts)

    def per_sample(self, active: frozenset[str], target: str) -> np.ndarray:
        return np.concatenate([p.per_sample(active, target) for p in self.parts])

    def _score(self, active: frozenset[str], target: str) -> float:
        return float(np.average(self.per_sample(active, target), weights=self.weights))


class MixedOracle(SampleOracle):
    """The mean of several estimates of the same agreement (e.g. in-stream and cross-stream)."""

    def __init__(self, estimates: Sequence[SampleOracle]) -> None:
        if not estimates:
            raise ValueError("MixedOracle needs at least one estimate")
        super().__init__()
        self.estimates = list(estimates)
        self.models = estimates[0].models

    def _score(self, active: frozenset[str], target: str) -> float:
        return float(np.mean([e(active, target) for e in self.estimates]))


@dataclass(slots=True)
class CrossFit:
    """The link set that runs, the honest oracle that scores its plans, and how it was made.

    ``fold_links[k]`` predicted the samples ``held_out[k]``; ``pools`` lists which folds were
    pooled into one estimate (one pool per estimate the oracle averages).
    """

    linkset: LinkSet
    oracle: SampleOracle
    scheme: Scheme
    fold_links: list[LinkSet]
    held_out: list[np.ndarray]
    pools: list[list[int]]

    def bundle_parts(
        self, outputs: Outputs
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """Tensors and JSON metadata that let :func:`oracle_from_bundle` rebuild the oracle:
        every fold link set under ``fold<k>/`` and its held-out outputs (encoded); ``outputs``
        are the samples the link set was trained on."""
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        metas = []
        for k, (ls, idx) in enumerate(zip(self.fold_links, self.held_out, strict=True)):
            t, meta = ls.to_bundle()
            tensors.update({f"fold{k}/{name}": v for name, v in t.items()})
            for m, spec in ls.specs.items():
                rows = encode_batch(spec, [outputs[m][i] for i in idx])
                tensors[f"fold{k}/held_out/{m}"] = {"encoded": torch.from_numpy(rows)}
            metas.append(meta)
        return tensors, {"scheme": self.scheme, "folds": metas, "pools": self.pools}


def oracle_from_bundle(
    tensors: Mapping[str, Mapping[str, torch.Tensor]], meta: Mapping[str, Any]
) -> SampleOracle:
    """The oracle :meth:`CrossFit.bundle_parts` saved (``meta`` is the dict it returned)."""
    parts = []
    for k, fold_meta in enumerate(meta["folds"]):
        prefix = f"fold{k}/"
        own = {n[len(prefix) :]: v for n, v in tensors.items() if n.startswith(prefix)}
        ls = LinkSet.from_bundle(own, fold_meta)
        held = {
            m: _decode(spec, own[f"held_out/{m}"]["encoded"].numpy())
            for m, spec in ls.specs.items()
        }
        parts.append(ls.agreement_oracle(held))
    return _combine(parts, meta["pools"])


def _combine(
    parts: Sequence[AgreementOracle],
    pools: Sequence[Sequence[int]],
    weights: Sequence[np.ndarray] | None = None,
) -> SampleOracle:
    pooled = [
        PooledOracle(
            [parts[k] for k in pool], None if weights is None else [weights[k] for k in pool]
        )
        for pool in pools
    ]
    return pooled[0] if len(pooled) == 1 else MixedOracle(pooled)


def _decode(spec: OutputSpec, rows: np.ndarray) -> list[Any]:
    if isinstance(spec, SequenceSpec | BoxesSpec):
        return [spec.decode(row) for row in rows]
    return list(rows)


def _members(n: int, groups: Sequence[Any] | None) -> list[list[int]]:
    """Sample indices per group, in order of first appearance (one group when None)."""
    labels = list(groups) if groups is not None else [0] * n
    if len(labels) != n:
        raise ValueError(f"{len(labels)} group labels for {n} samples")
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(labels):
        members.setdefault(g, []).append(i)
    return list(members.values())


def contiguous_folds(n: int, folds: int, groups: Sequence[Any] | None = None) -> np.ndarray:
    """Fold id per sample: ``folds`` contiguous blocks of each group's samples, in order.

    ``groups`` (e.g. stream ids) keeps every group represented in every fold; without it the
    samples form one group.
    """
    if folds < 2:
        raise ValueError(f"folds = {folds}; cross-fitting needs at least 2")
    fold = np.empty(n, dtype=np.int64)
    for idx in _members(n, groups):
        fold[idx] = np.minimum(np.arange(len(idx)) * folds // len(idx), folds - 1)
    return fold


def trainable_folds(n: int, folds: int, groups: Sequence[Any] | None = None) -> np.ndarray:
    """:func:`contiguous_folds`, with fewer folds, or blocks of the pooled samples, when some
    fold would leave fewer than :data:`MIN_FIT` samples to train on. A short warm-up over
    several cameras puts each camera's first frame in fold 0: 3 cameras of 2 frames leave 3.
    Any :data:`MIN_TRAIN` samples have an assignment that works (two blocks of 4); below that,
    the requested one, and the training says why it cannot."""
    for k in range(folds, 1, -1):
        for by in (groups, None):
            fold = contiguous_folds(n, k, by)
            if n - np.bincount(fold).max() >= MIN_FIT:
                return fold
    return contiguous_folds(n, folds, groups)


def group_folds(n: int, groups: Sequence[Any] | None) -> np.ndarray:
    """Fold id per sample: one fold per group (stream)."""
    fold = np.empty(n, dtype=np.int64)
    members = _members(n, groups)
    if len(members) < 2:
        raise ValueError("one fold per stream needs samples from at least two streams")
    for k, idx in enumerate(members):
        fold[idx] = k
    return fold


def _subset(outputs: Outputs, idx: np.ndarray) -> dict[str, list[Any]]:
    return {m: [v[i] for i in idx.tolist()] for m, v in outputs.items()}


def _n(outputs: Outputs) -> int:
    counts = {len(v) for v in outputs.values()}
    if len(counts) != 1:
        raise ValueError(f"models must have outputs on the same samples, got counts {counts}")
    return counts.pop()


def _train(specs, outputs: Outputs, config: TrainConfig, ensemble: EnsembleKind) -> LinkSet:
    return LinkSet.train(specs, outputs, config, ensemble, progress=False)


def train_task(task: TrainTask) -> LinkSet:
    """One link set of a cross-fit: what a :data:`TrainMap` maps over (picklable)."""
    return _train(*task)


def _splits(n: int, fold_of: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per fold: its held-out samples and the samples the fold's link set trains on."""
    fold = np.asarray(fold_of)
    if len(fold) != n:
        raise ValueError(f"fold_of has {len(fold)} entries for {n} samples")
    out = []
    for k in np.unique(fold).tolist():
        hold, fit = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        if len(fit) < MIN_FIT:
            raise TooFewSamples(
                f"fold {k} leaves {len(fit)} samples to train on (need {MIN_FIT}); "
                "use fewer folds or more samples"
            )
        out.append((hold, fit))
    return out


def cross_fit(
    specs: Mapping[str, OutputSpec],
    outputs: Outputs,
    config: TrainConfig | None = None,
    ensemble: EnsembleKind = "weighted",
    folds: int = 5,
    fold_of: Sequence[int] | None = None,
    also: Sequence[Sequence[int]] = (),
    weights: np.ndarray | None = None,
    train_map: TrainMap = map,
) -> CrossFit:
    """Train the link set on all samples and score it out of fold.

    ``fold_of`` gives each sample's fold (default: :func:`contiguous_folds` in the order given).
    Each of ``also`` is another fold assignment; the oracle is then the mean of the pooled
    estimates of every assignment (the ``"mixed"`` scheme). ``weights``: each sample's weight in
    the pooled means (None: all alike; not kept by :meth:`CrossFit.bundle_parts`). Raises
    ValueError when a fold would leave fewer than 4 samples to train on.

    ``train_map`` trains the link sets (every fold's and the full one, independent of each
    other): ``map`` trains them one after another, an executor's ``map`` in parallel. Each
    training seeds itself, so the result is the same either way.
    """
    config = config or TrainConfig()
    n = _n(outputs)
    assignments = [fold_of if fold_of is not None else contiguous_folds(n, folds), *also]
    splits = [_splits(n, assignment) for assignment in assignments]
    if weights is not None and len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} samples")
    tasks = [(specs, _subset(outputs, fit), config, ensemble) for s in splits for _, fit in s]
    # the largest first: side by side, the others fill in around it
    full, *links = list(train_map(train_task, [(specs, outputs, config, ensemble), *tasks]))
    held = [hold for s in splits for hold, _ in s]
    parts = [ls.agreement_oracle(_subset(outputs, h)) for ls, h in zip(links, held, strict=True)]
    sizes = np.cumsum([0] + [len(s) for s in splits]).tolist()
    pools = [list(range(a, b)) for a, b in itertools.pairwise(sizes)]
    scheme: Scheme = "mixed" if also else "crossfit"
    held_weights = None if weights is None else [np.asarray(weights)[idx] for idx in held]
    return CrossFit(full, _combine(parts, pools, held_weights), scheme, links, held, pools)


def fit_and_score(
    specs: Mapping[str, OutputSpec],
    outputs: Outputs,
    config: TrainConfig | None = None,
    ensemble: EnsembleKind = "weighted",
    scheme: Scheme = "mixed",
    folds: int = 5,
    groups: Sequence[Any] | None = None,
    balanced: bool = False,
    train_map: TrainMap = map,
) -> CrossFit:
    """The link set to run and the oracle to select with, by ``scheme`` (see the module
    docstring). ``groups`` are the samples' stream ids, in time order within each stream.
    ``train_map``: how the cross-fitted schemes train their link sets (:func:`cross_fit`).

    ``balanced`` (crossfit and mixed, with ``groups``): the oracle weighs every stream the same
    however many samples it has, as stream synthesis's estimates do for a backlog's warm-up
    (:func:`~mlink.linkstore.streamerror.stream_weights`). Replays only: on backlog warm-ups its
    plans kept no more than sample weights' and its forecasts were no closer (BENCHMARKS.md,
    "The paper's links under a backlog"), so the live trainer does not use it."""
    config = config or TrainConfig()
    n = _n(outputs)
    streams = len(_members(n, groups))
    weights = stream_weights(list(groups), True) if balanced and groups is not None else None
    if scheme == "mixed" and (
        streams < 2 or n - max(len(idx) for idx in _members(n, groups)) < MIN_FIT
    ):
        # holding out a stream would leave too few samples to train on (a camera that has just
        # joined the warm-up, or a short stream): cross-fit within the streams only
        scheme = "crossfit"
    if scheme in ("crossfit", "mixed"):
        within = trainable_folds(n, folds, groups)
        across = [group_folds(n, groups)] if scheme == "mixed" else []
        return cross_fit(
            specs,
            outputs,
            config,
            ensemble,
            fold_of=within,
            also=across,
            weights=weights,
            train_map=train_map,
        )
    if scheme == "streams":
        folds_of = group_folds(n, groups)
        fit = cross_fit(specs, outputs, config, ensemble, fold_of=folds_of, train_map=train_map)
        fit.scheme = "streams"
        return fit
    if scheme == "holdout":
        late = np.zeros(n, dtype=bool)
        for idx in _members(n, groups):
            late[idx[len(idx) - max(1, round(len(idx) / folds)) :]] = True
        hold, fit_idx = np.flatnonzero(late), np.flatnonzero(~late)
        if len(fit_idx) < MIN_FIT:
            raise ValueError(f"holdout leaves {len(fit_idx)} samples to train on (need {MIN_FIT})")
        ls = _train(specs, _subset(outputs, fit_idx), config, ensemble)
        oracle = PooledOracle([ls.agreement_oracle(_subset(outputs, hold))])
        return CrossFit(ls, oracle, "holdout", [ls], [hold], [[0]])
    if scheme == "validation":
        ls = _train(specs, outputs, config, ensemble)
        oracle = PooledOracle([ls.validation_oracle(outputs)])
        return CrossFit(ls, oracle, "validation", [ls], [ls.val_index], [[0]])
    raise ValueError(f"unknown scheme {scheme!r}; use one of {list(SCHEMES)}")
