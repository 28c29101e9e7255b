"""How well each target is synthesized from any active set, measured on given real outputs.

The selector asks this oracle about thousands of active sets; link predictions are computed once
per target and each query only re-weights them through the ensemble.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mlink.linkstore.metrics import agreement
from mlink.linkstore.rows import decode_rows
from mlink.topics.specs import SequenceSpec, encode_batch

if TYPE_CHECKING:
    from mlink.linkstore.linkset import LinkSet

__all__ = ["AgreementOracle", "SampleOracle"]


class SampleOracle:
    """``oracle(active, target)`` -> agreement in [0, 1], memoised per query; subclasses say how
    a query is scored (:meth:`_score`) and which models exist (``models``)."""

    models: list[str]

    def __init__(self) -> None:
        self._cache: dict[tuple[frozenset[str], str], float] = {}

    def _score(self, active: frozenset[str], target: str) -> float:
        raise NotImplementedError

    def __call__(self, active: frozenset[str], target: str) -> float:
        key = (frozenset(active), target)
        if key not in self._cache:
            self._cache[key] = float(self._score(*key))
        return self._cache[key]

    def accuracy(self, active: frozenset[str]) -> float:
        """The paper's objective: mean over models of 1 if active else synthesized agreement."""
        return float(np.mean([self(frozenset(active), m) for m in self.models]))


class AgreementOracle(SampleOracle):
    """``oracle(active, target)`` -> mean agreement in [0, 1], memoised.

    All link predictions are computed once; each query only re-weights them, so the exact selector
    can ask about thousands of subsets cheaply.
    """

    def __init__(self, linkset: LinkSet, outputs: Mapping[str, Sequence[Any]]) -> None:
        super().__init__()
        self.linkset = linkset
        self.models = linkset.models
        self.outputs = {m: list(outputs[m]) for m in linkset.models}
        self._enc = {m: encode_batch(linkset.specs[m], self.outputs[m]) for m in linkset.models}
        self._preds: dict[str, np.ndarray] = {}

    def _predictions(self, target: str) -> np.ndarray:
        if target not in self._preds:
            ls = self.linkset
            self._preds[target] = np.stack(
                [ls.link_predict(s, target, self._enc[s]) for s in ls.sources_of(target)]
            )
        return self._preds[target]

    def synthesized(self, active: frozenset[str], target: str) -> Any:
        """Decoded synthesized outputs of ``target`` from ``active`` on every sample."""
        ls = self.linkset
        sources = ls.sources_of(target)
        present = [s for s in sources if s in active]
        n = len(self.outputs[target])
        spec = ls.specs[target]
        if not present:
            rows = np.repeat(ls.priors[target][None], n, axis=0)
        elif isinstance(spec, SequenceSpec):
            best = max(present, key=lambda s: ls.link_scores[(s, target)])
            rows = self._predictions(target)[sources.index(best)]
        else:
            mask = np.tile(np.array([s in active for s in sources]), (n, 1))
            rows = ls.combine(target, self._predictions(target), mask)
        return decode_rows(spec, rows)

    def _score(self, active: frozenset[str], target: str) -> float:
        return float(self.per_sample(active, target).mean())

    def per_sample(self, active: frozenset[str], target: str) -> np.ndarray:
        if target in active:
            return np.ones(len(self.outputs[target]))
        spec = self.linkset.specs[target]
        return agreement(spec, self.synthesized(active, target), self.outputs[target])
