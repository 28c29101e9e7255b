"""Training losses by target task, computed on logits, reduced per link.

Every loss keeps a leading *link* dimension: ``(links, batch, dim)`` in, ``(links,)`` out. Summing
the per-link losses and stepping an element-wise optimiser (RMSprop, Adam) updates each link exactly
as if it were trained alone, which is what lets :mod:`mlink.linkstore.training` train all links into
one target as a single batched network.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

RegressionLoss = Literal["huber", "mse"]


def vector_loss(
    task: str, logits: torch.Tensor, target: torch.Tensor, regression: RegressionLoss = "huber"
) -> torch.Tensor:
    """Soft cross-entropy (softmax), BCE (sigmoid) or Huber/MSE (linear, count), per link."""
    if task == "softmax":
        return -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean(dim=-1)
    if task == "sigmoid":
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif regression == "mse":
        loss = F.mse_loss(logits, target, reduction="none")
    else:
        loss = F.smooth_l1_loss(logits, target, reduction="none")
    return loss.mean(dim=(-1, -2))


def probability_loss(
    task: str, probs: torch.Tensor, target: torch.Tensor, regression: RegressionLoss = "huber"
) -> torch.Tensor:
    """The same losses for already-activated outputs (an ensemble mixes probabilities)."""
    eps = 1e-6
    if task == "softmax":
        return -(target * torch.log(probs.clamp_min(eps))).sum(dim=-1).mean(dim=-1)
    if task == "sigmoid":
        loss = F.binary_cross_entropy(probs.clamp(eps, 1 - eps), target, reduction="none")
    elif regression == "mse":
        loss = F.mse_loss(probs, target, reduction="none")
    else:
        loss = F.smooth_l1_loss(probs, target, reduction="none")
    return loss.mean(dim=(-1, -2))


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy that ignores padding (targets of -100)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
