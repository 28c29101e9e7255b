"""Agreement estimates that do not over-promise: score plans on samples no link or ensemble saw.

:meth:`LinkSet.train` fits the links on 80% of the samples, and on the other 20% picks each link's
best epoch and trains the ensembles. An oracle on those same 20% (:meth:`LinkSet.validation_oracle`)
scores the very samples the ensembles were fitted to, and with a few dozen samples the selector
then picks the plan whose estimate happens to be highest: predicted accuracy runs above what the
plan keeps on new frames. Two honest estimators, same interface as
:class:`~mlink.linkstore.linkset.AgreementOracle`:

- :func:`cross_fit` (the default): split the samples into ``folds`` blocks; for each block train a
  link set (links *and* ensembles) on the other blocks and predict the block; the oracle pools
  those out-of-fold agreements over every sample. The link set that runs is trained on all
  samples, so it is scored by models trained on ``(K-1)/K`` of its data (slightly pessimistic).
- ``scheme="streams"`` in :func:`fit_and_score`: cross-fitting with one fold per group (stream):
  every stream is scored by links that never saw that stream. Harsher: it asks how links carry
  over to other footage, where the default asks how they carry over to other moments of the same.
- :func:`holdout`: train on the first ``1 - fraction`` of the samples, score on the rest. The link
  set that runs is exactly the one scored, but it learned from less data.

Blocks are contiguous runs of samples in the order given (within each group, e.g. a stream), not
random rows: neighbouring frames of a video are near-duplicates, and a block that shares its
neighbours with the training data would flatter a link that memorised them.

At run time the trainer can keep the fold link sets and held-out outputs in its bundle
(:meth:`CrossFit.bundle_parts`) and the controller rebuild the oracle from them
(:func:`pooled_oracle_from_bundle`), so live selection scores plans the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mlink.linkstore.ensemble import EnsembleKind
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.oracle import AgreementOracle, SampleOracle
from mlink.linkstore.training import TrainConfig
from mlink.topics.specs import BoxesSpec, OutputSpec, SequenceSpec, encode_batch

__all__ = [
    "CrossFit",
    "PooledOracle",
    "Scheme",
    "contiguous_folds",
    "cross_fit",
    "fit_and_score",
    "holdout",
    "pooled_oracle_from_bundle",
]

Scheme = Literal["crossfit", "streams", "holdout", "validation"]
#: Fewest samples a fold's link set may train on (LinkSet.train then still has a validation row).
MIN_FIT = 4


class PooledOracle(SampleOracle):
    """Agreement of any active set, pooled over several (link set, held-out samples) pairs.

    Each part predicts only samples its link set never trained on; the pooled mean weighs every
    sample once.
    """

    def __init__(self, parts: Sequence[AgreementOracle]) -> None:
        if not parts:
            raise ValueError("PooledOracle needs at least one part")
        super().__init__()
        self.parts = list(parts)
        self.models = parts[0].linkset.models

    @property
    def n_samples(self) -> int:
        return sum(len(p.outputs[self.models[0]]) for p in self.parts)

    def per_sample(self, active: frozenset[str], target: str) -> np.ndarray:
        return np.concatenate([p.per_sample(frozenset(active), target) for p in self.parts])


@dataclass(slots=True)
class CrossFit:
    """The link set that runs, the honest oracle that scores its plans, and how it was made."""

    linkset: LinkSet
    oracle: PooledOracle
    scheme: Scheme
    fold_links: list[LinkSet]
    held_out: list[np.ndarray]  # sample indices each fold link set predicts

    def bundle_parts(
        self, outputs: Mapping[str, Sequence[Any]]
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """Tensors and JSON metadata that let :func:`pooled_oracle_from_bundle` rebuild the
        oracle: every fold link set under ``fold<k>/`` and its held-out outputs (encoded)."""
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        metas = []
        for k, (ls, idx) in enumerate(zip(self.fold_links, self.held_out, strict=True)):
            t, meta = ls.to_bundle()
            tensors.update({f"fold{k}/{name}": v for name, v in t.items()})
            for m, spec in ls.specs.items():
                rows = encode_batch(spec, [outputs[m][i] for i in idx])
                tensors[f"fold{k}/held_out/{m}"] = {"encoded": torch.from_numpy(rows)}
            metas.append(meta)
        return tensors, {"scheme": self.scheme, "folds": metas}


def pooled_oracle_from_bundle(
    tensors: Mapping[str, Mapping[str, torch.Tensor]], meta: Mapping[str, Any]
) -> PooledOracle:
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
    return PooledOracle(parts)


def _decode(spec: OutputSpec, rows: np.ndarray) -> list[Any]:
    if isinstance(spec, SequenceSpec | BoxesSpec):
        return [spec.decode(row) for row in rows]
    return list(rows)


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


def _members(n: int, groups: Sequence[Any] | None) -> list[list[int]]:
    """Sample indices per group, in order of first appearance (one group when None)."""
    labels = list(groups) if groups is not None else [0] * n
    if len(labels) != n:
        raise ValueError(f"{len(labels)} group labels for {n} samples")
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(labels):
        members.setdefault(g, []).append(i)
    return list(members.values())


def _subset(outputs: Mapping[str, Sequence[Any]], idx: np.ndarray) -> dict[str, list[Any]]:
    return {m: [v[i] for i in idx.tolist()] for m, v in outputs.items()}


def _n(outputs: Mapping[str, Sequence[Any]]) -> int:
    counts = {len(v) for v in outputs.values()}
    if len(counts) != 1:
        raise ValueError(f"models must have outputs on the same samples, got counts {counts}")
    return counts.pop()


def cross_fit(
    specs: Mapping[str, OutputSpec],
    outputs: Mapping[str, Sequence[Any]],
    config: TrainConfig | None = None,
    ensemble: EnsembleKind = "weighted",
    folds: int = 5,
    fold_of: Sequence[int] | None = None,
) -> CrossFit:
    """Train the link set on all samples and score it out of fold (see the module docstring).

    ``fold_of`` gives each sample's fold (default: :func:`contiguous_folds` in the order given).
    Raises ValueError when a fold would leave fewer than 4 samples to train on.
    """
    config = config or TrainConfig()
    n = _n(outputs)
    fold = np.asarray(fold_of if fold_of is not None else contiguous_folds(n, folds))
    if len(fold) != n:
        raise ValueError(f"fold_of has {len(fold)} entries for {n} samples")
    fold_links, held_out, parts = [], [], []
    for k in np.unique(fold).tolist():
        hold, fit = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        if len(fit) < MIN_FIT:
            raise ValueError(
                f"fold {k} leaves {len(fit)} samples to train on (need {MIN_FIT}); "
                "use fewer folds or more samples"
            )
        ls = LinkSet.train(specs, _subset(outputs, fit), config, ensemble, progress=False)
        fold_links.append(ls)
        held_out.append(hold)
        parts.append(ls.agreement_oracle(_subset(outputs, hold)))
    full = LinkSet.train(specs, outputs, config, ensemble, progress=False)
    return CrossFit(full, PooledOracle(parts), "crossfit", fold_links, held_out)


def holdout(
    specs: Mapping[str, OutputSpec],
    outputs: Mapping[str, Sequence[Any]],
    config: TrainConfig | None = None,
    ensemble: EnsembleKind = "weighted",
    fraction: float = 0.2,
    groups: Sequence[Any] | None = None,
) -> CrossFit:
    """Train on the first ``1 - fraction`` of each group's samples, score on the rest."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    n = _n(outputs)
    late = np.zeros(n, dtype=bool)
    for idx in _members(n, groups):
        k = max(1, round(len(idx) * fraction))
        late[idx[len(idx) - k :]] = True
    hold, fit = np.flatnonzero(late), np.flatnonzero(~late)
    if len(fit) < MIN_FIT:
        raise ValueError(f"holdout leaves {len(fit)} samples to train on (need {MIN_FIT})")
    ls = LinkSet.train(specs, _subset(outputs, fit), config, ensemble, progress=False)
    oracle = PooledOracle([ls.agreement_oracle(_subset(outputs, hold))])
    return CrossFit(ls, oracle, "holdout", [ls], [hold])


def fit_and_score(
    specs: Mapping[str, OutputSpec],
    outputs: Mapping[str, Sequence[Any]],
    config: TrainConfig | None = None,
    ensemble: EnsembleKind = "weighted",
    scheme: Scheme = "crossfit",
    folds: int = 5,
    groups: Sequence[Any] | None = None,
) -> CrossFit:
    """The link set to run and the oracle to select with, by ``scheme``: ``"crossfit"``
    (default), ``"streams"`` (one fold per group), ``"holdout"``, or ``"validation"`` (the link
    set's own validation split, which also trained the ensembles: kept for comparison, it
    over-promises)."""
    if scheme == "streams":
        labels = list(groups) if groups is not None else []
        ids = {g: k for k, g in enumerate(dict.fromkeys(labels))}
        if len(ids) < 2:
            raise ValueError("scheme 'streams' needs samples from at least two groups (streams)")
        return cross_fit(specs, outputs, config, ensemble, fold_of=[ids[g] for g in labels])
    if scheme == "crossfit":
        n = _n(outputs)
        return cross_fit(
            specs, outputs, config, ensemble, folds, contiguous_folds(n, folds, groups)
        )
    if scheme == "holdout":
        return holdout(specs, outputs, config, ensemble, 1.0 / folds, groups)
    if scheme == "validation":
        ls = LinkSet.train(specs, outputs, config, ensemble, progress=False)
        oracle = PooledOracle([ls.validation_oracle(outputs)])
        return CrossFit(ls, oracle, "validation", [ls], [ls.val_index])
    raise ValueError(
        f"unknown scheme {scheme!r}; use 'crossfit', 'streams', 'holdout' or 'validation'"
    )
