"""Plain links scored like the temporal ones: cross-fitted over time blocks of each stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlink.eval.temporal.geometry import is_vector
from mlink.linkstore.links import activate
from mlink.linkstore.linkset import decode_rows
from mlink.linkstore.metrics import agreement
from mlink.linkstore.training import split_indices, torch_threads, train_stacked

if TYPE_CHECKING:
    from mlink.eval.temporal.context import Context

__all__ = ["BlockedOracle"]


class BlockedOracle:
    """Plain links' agreement for any active set, estimated like the temporal links: every
    training frame is predicted by links trained on the other time blocks of its stream (same
    recipe as the plain links, combined by the plain link set's ensemble).

    The plain link set's own validation split is a random 20% of the training frames, whose
    neighbours (near-duplicates on video) it trained on; this estimate does not flatter a link
    that memorised them. Targets it cannot handle (sequences) fall back to that validation.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        ls = ctx.linkset
        self.sources: dict[str, list[str]] = {}
        self.preds: dict[str, np.ndarray] = {}
        self.truth: dict[str, Any] = {}
        self._cache: dict[tuple[frozenset[str], str], float] = {}
        frames = ctx.train
        fold = ctx.fold[frames]
        cfg = ctx.config.links
        with torch_threads(1):
            for t in ctx.models:
                spec = ctx.specs[t]
                sources = ls.sources_of(t)
                if (
                    not sources
                    or t not in ls.ensembles
                    or not all(is_vector(ctx.specs[m]) for m in [t, *sources])
                ):
                    continue
                inputs = [ctx.enc[m][frames] for m in sources]
                x_all = [torch.from_numpy(x) for x in inputs]
                preds = np.zeros((len(sources), len(frames), spec.link_dim), dtype=np.float32)
                ok = True
                for f in range(ctx.config.folds):
                    hold, fit = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
                    if len(hold) == 0:
                        continue
                    if len(fit) < 4:
                        ok = False
                        break
                    tr, va = split_indices(len(fit), cfg.val_fraction, cfg.seed + f)
                    model, _ = train_stacked(
                        inputs, ctx.enc[t][frames], spec.link_task, fit[tr], fit[va], cfg
                    )
                    with torch.no_grad():
                        for i, x in enumerate(x_all):
                            link = model.extract(i)
                            preds[i, hold] = activate(spec.link_task, link(x[hold])).numpy()
                if ok:
                    self.sources[t] = sources
                    self.preds[t] = preds
                    self.truth[t] = [ctx.wl.outputs[t][i] for i in frames]

    def __call__(self, active: frozenset[str], target: str) -> float:
        if target in active:
            return 1.0
        if target not in self.preds:
            return self.ctx.val_oracle(active, target)
        key = (frozenset(active), target)
        if key not in self._cache:
            spec = self.ctx.specs[target]
            preds = self.preds[target]
            mask = np.tile(
                np.array([s in active for s in self.sources[target]]), (preds.shape[1], 1)
            )
            rows = self.ctx.linkset.combine(target, preds, mask)
            score = agreement(spec, decode_rows(spec, rows), self.truth[target])
            self._cache[key] = float(score.mean())
        return self._cache[key]
