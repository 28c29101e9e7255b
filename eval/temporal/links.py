"""Temporal links: a target's last real output, plus an active source's change, to its output now.

Trained per target as one stacked network over every source, cross-fitted over contiguous time
blocks of each stream's training part (neighbouring frames are near-duplicates, so a random split
would flatter a memoriser); at test time the fold models are bagged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mlink.eval.temporal.geometry import is_vector
from mlink.eval.temporal.policy import SELF
from mlink.linkstore.fast import activate_np
from mlink.linkstore.links import activate
from mlink.linkstore.metrics import agreement
from mlink.linkstore.rows import decode_rows
from mlink.linkstore.training import StackedVecLinks, split_indices, torch_threads, train_stacked
from mlink.topics.specs import BoxesSpec, VectorSpec

if TYPE_CHECKING:
    from mlink.eval.temporal.context import Context

__all__ = ["TemporalLinks", "snap"]


def snap(spec, base: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Keep the refresh's output exactly unless the link predicts a real change.

    A regression residual is never exactly zero, and a slightly moved box or value scores less
    than the exact old one when nothing changed. So boxes are kept as they were unless the
    predicted count differs, and values unless they moved by at least half their tolerance.
    """
    if isinstance(spec, BoxesSpec):
        same = np.rint(np.clip(pred[..., 0], 0, None)) == base[..., 0]
        return np.where(same[..., None], np.broadcast_to(base, pred.shape), pred)
    if isinstance(spec, VectorSpec) and spec.task in ("linear", "count"):
        tol = 0.5 if spec.task == "count" else spec.tolerance / 2
        return np.where(np.abs(pred - base) < tol, np.broadcast_to(base, pred.shape), pred)
    return pred


class _Bag:
    """The fold models of one target's stacked temporal links, as numpy arrays."""

    def __init__(self, models: Sequence[StackedVecLinks], task: str) -> None:
        self.task = task
        self.params = [
            tuple(
                t.detach().numpy().astype(np.float32)
                for t in (m.mean[:, 0], m.std[:, 0], m.w1, m.b1[:, 0], m.w2, m.b2[:, 0])
            )
            for m in models
        ]

    def __call__(self, link: int, x: np.ndarray) -> np.ndarray:
        """Activated outputs of link ``link`` on rows ``x`` (its own width), averaged over folds."""
        out = None
        for mean, std, w1, b1, w2, b2 in self.params:
            d = x.shape[1]
            h = (x - mean[link, :d]) / std[link, :d] @ w1[link, :d] + b1[link]
            y = activate_np(self.task, np.maximum(h, 0.0) @ w2[link] + b2[link])
            out = y if out is None else out + y
        return out / len(self.params)


class TemporalLinks:
    """Temporal links into every vector/boxes target, cross-fitted on the training part.

    For target ``t`` the links are ``SELF`` (input: ``t``'s output at the refresh and the lag)
    and one per other model ``s`` (input: ``s``'s output now, its change since the refresh, ``t``'s
    output at the refresh and the lag). ``oof[t]`` holds every training pair's out-of-fold
    prediction per link, ``oof_agree[t]`` its agreement with the real output.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.max_lag = cfg.max_lag
        self.pairs, self.lag = ctx.tpairs, ctx.tlag
        self.fold = ctx.fold[self.pairs[:, 1]]
        self.sources: dict[str, list[str]] = {}
        self.bags: dict[str, _Bag] = {}
        self.oof: dict[str, np.ndarray] = {}
        self.oof_agree: dict[str, np.ndarray] = {}
        self.link_ms: dict[str, float] = {}
        self.residual: dict[str, bool] = {}
        with torch_threads(1):
            for t in ctx.models:
                if is_vector(ctx.specs[t]) and len(self.pairs) >= 8:
                    self._train_target(t)

    def _inputs(self, t: str, source: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        enc, pos = self.ctx.enc, self.ctx.pos
        lag = (np.minimum(pos[b] - pos[a], self.max_lag) / self.max_lag)[:, None]
        parts = [enc[t][a], lag.astype(np.float32)]
        if source != SELF:
            parts = [enc[source][b], enc[source][b] - enc[source][a], *parts]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _train_target(self, t: str) -> None:
        ctx = self.ctx
        spec = ctx.specs[t]
        task = spec.link_task
        residual = task not in ("softmax", "sigmoid")
        task = "linear" if residual else task
        sources = [SELF] + [s for s in ctx.models if s != t and is_vector(ctx.specs[s])]
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        inputs = [self._inputs(t, s, a, b) for s in sources]
        base = ctx.enc[t][a] if residual else 0.0
        y = ctx.enc[t][b] - base if residual else ctx.enc[t][b]
        oof = np.zeros((len(sources), len(a), spec.link_dim), dtype=np.float32)
        models = []
        link_cfg = ctx.config.temporal_links
        x_all = [torch.from_numpy(x) for x in inputs]
        for f in range(ctx.config.folds):
            hold = np.flatnonzero(self.fold == f)
            fit = np.flatnonzero(self.fold != f)
            if len(fit) < 4:
                continue
            tr, va = split_indices(len(fit), link_cfg.val_fraction, link_cfg.seed + f)
            model, _ = train_stacked(inputs, y, task, fit[tr], fit[va], link_cfg)
            models.append(model)
            if len(hold):
                with torch.no_grad():
                    for i, x in enumerate(x_all):
                        oof[i, hold] = activate(task, model.extract(i)(x[hold])).numpy()
        if not models:
            return
        if residual:
            oof = snap(spec, ctx.enc[t][a][None], oof + ctx.enc[t][a][None])
        self.sources[t] = sources
        self.bags[t] = _Bag(models, task)
        self.residual[t] = residual
        self.oof[t] = oof
        truth = [ctx.wl.outputs[t][i] for i in b]
        self.oof_agree[t] = np.stack([agreement(spec, decode_rows(spec, p), truth) for p in oof])
        self.link_ms[t] = self._time(t, sources[-1] if len(sources) > 1 else SELF)

    def _time(self, t: str, source: str, repeats: int = 50) -> float:
        a = self.pairs[:1, 0]
        b = self.pairs[:1, 1]
        self.predict(t, source, a, b)
        start = time.perf_counter()
        for _ in range(repeats):
            self.predict(t, source, a, b)
        return (time.perf_counter() - start) * 1000 / repeats

    def predict(self, t: str, source: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Encoded predictions of ``t`` on frames ``b`` from its refresh on frames ``a``."""
        if len(a) == 0:
            return np.zeros((0, self.ctx.specs[t].link_dim), dtype=np.float32)
        link = self.sources[t].index(source)
        out = self.bags[t](link, self._inputs(t, source, a, b))
        if not self.residual[t]:
            return out
        base = self.ctx.enc[t][a]
        return snap(self.ctx.specs[t], base, out + base)

    def has(self, t: str) -> bool:
        return t in self.bags
