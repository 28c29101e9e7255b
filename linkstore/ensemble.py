"""Ensembles: combine the links from whichever models are active into one synthesized output.

Under a budget the active set changes at run time, so one ensemble per target must serve *every*
subset of its sources without retraining. Two designs:

- :class:`WeightedEnsemble` (the paper's): one trainable weight per source; for an active subset
  the weights are renormalised over that subset (a masked softmax) and the link outputs averaged.
- :class:`FusionEnsemble`: a learned dense layer over the masked concatenation of link outputs plus
  the mask itself (the reference code's fusion layer, made subset-aware). More capacity; it can
  learn interactions, and it can also overfit the small held-out split it is trained on.

Both are trained with a random active subset per sample, so the weights fit any subset, and both
work on *activated* link outputs (probabilities for softmax/sigmoid targets).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from mlink.linkstore.links import activate
from mlink.linkstore.losses import probability_loss, vector_loss
from mlink.linkstore.training import TrainConfig, epoch_done, make_optimizer

EnsembleKind = Literal["weighted", "fusion"]


class WeightedEnsemble(nn.Module):
    """Masked-softmax weighted average of link outputs; the paper's subset-reusable ensemble.

    Beyond the paper, the target's prior (its no-information guess) takes part as one more,
    always-present source with its own weight. When the links from the active models are worse
    than guessing -- sparse detectors whose outputs are mostly empty -- the ensemble learns to
    shrink towards the prior instead of trusting them; with no active source it *is* the prior.
    """

    def __init__(self, n_sources: int, out_dim: int, task: str) -> None:
        super().__init__()
        self.n_sources, self.out_dim, self.task = n_sources, out_dim, task
        self.logit_weights = nn.Parameter(torch.zeros(n_sources))
        self.prior_logit = nn.Parameter(torch.zeros(1))
        self.register_buffer("prior", torch.zeros(out_dim))

    def forward(self, preds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``preds (S, B, d)`` activated link outputs, ``mask (B, S)`` -> ``(B, d)`` output."""
        w = self.logit_weights.expand(mask.shape).masked_fill(~mask, -torch.inf)
        w = torch.softmax(torch.cat([w, self.prior_logit.expand(mask.shape[0], 1)], dim=1), dim=1)
        return torch.einsum("bs,sbd->bd", w[:, :-1], preds) + w[:, -1:] * self.prior

    def extra_repr(self) -> str:
        return f"n_sources={self.n_sources}, out_dim={self.out_dim}, task={self.task}"


class FusionEnsemble(nn.Module):
    """A dense layer over ``[masked link outputs, mask]`` with the target's activation."""

    def __init__(self, n_sources: int, out_dim: int, task: str) -> None:
        super().__init__()
        self.n_sources, self.out_dim, self.task = n_sources, out_dim, task
        self.layer = nn.Linear(n_sources * out_dim + n_sources, out_dim)

    def logits(self, preds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        masked = preds * mask.T.unsqueeze(-1).to(preds.dtype)
        flat = masked.permute(1, 0, 2).reshape(mask.shape[0], -1)
        return self.layer(torch.cat([flat, mask.to(preds.dtype)], dim=1))

    def forward(self, preds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return activate(self.task, self.logits(preds, mask))

    def extra_repr(self) -> str:
        return f"n_sources={self.n_sources}, out_dim={self.out_dim}, task={self.task}"


def build_ensemble(
    kind: EnsembleKind, n_sources: int, out_dim: int, task: str, prior: np.ndarray | None = None
) -> nn.Module:
    if kind == "weighted":
        ensemble = WeightedEnsemble(n_sources, out_dim, task)
        if prior is not None:
            ensemble.prior.copy_(torch.from_numpy(np.asarray(prior, dtype=np.float32)))
        return ensemble
    if kind == "fusion":
        return FusionEnsemble(n_sources, out_dim, task)
    raise ValueError(f"ensemble kind {kind!r} is unknown; use 'weighted' or 'fusion'")


def random_masks(batch: int, n_sources: int, gen: torch.Generator) -> torch.Tensor:
    """Random non-empty active subsets, with a random density per row so small and large subsets
    are both common (uniform subsets would almost never show a lone source for large ``S``)."""
    density = torch.rand(batch, 1, generator=gen)
    mask = torch.rand(batch, n_sources, generator=gen) < density
    empty = ~mask.any(dim=1)
    mask[empty, torch.randint(n_sources, (int(empty.sum()),), generator=gen)] = True
    return mask


def train_ensemble(
    ensemble: nn.Module, preds: np.ndarray, target: np.ndarray, config: TrainConfig
) -> nn.Module:
    """Fit the ensemble on held-out link predictions ``(S, n, d)`` against real outputs ``(n, d)``.

    Trained on data the links never saw, so the weights learn how much to trust each link rather
    than how well it memorised its training set.
    """
    p = torch.from_numpy(np.asarray(preds, dtype=np.float32))
    y = torch.from_numpy(np.asarray(target, dtype=np.float32))
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(ensemble.parameters(), config)
    task = ensemble.task
    ensemble.train()
    for _ in range(config.ensemble_epochs):
        for batch in torch.randperm(y.shape[0], generator=gen).split(config.batch_size):
            mask = random_masks(len(batch), ensemble.n_sources, gen)
            if isinstance(ensemble, FusionEnsemble):
                out = ensemble.logits(p[:, batch], mask)
                loss = vector_loss(task, out[None], y[batch][None], config.regression_loss)[0]
            else:
                out = ensemble(p[:, batch], mask)
                loss = probability_loss(task, out[None], y[batch][None], config.regression_loss)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_done()
    return ensemble.eval()
