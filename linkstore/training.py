"""Training links: the paper's recipe (RMSprop, lr 0.01, 100 epochs, batch 32, best checkpoint on a
validation split), made fast on a CPU.

Links are tiny, so per-step Python overhead, not arithmetic, dominates their training. All vec->vec
links into one target share the target's output size and loss, so they are trained together as one
:class:`StackedVecLinks` network whose matrices carry a leading link dimension (``torch.bmm``): one
optimiser step updates every link at once, and because the losses are summed per link and the
optimiser is element-wise, each link ends up exactly as if trained alone. Inputs of different widths
are zero-padded; padded weights see zero gradient and never move.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mlink.linkstore.links import (
    VecToVecLink,
    decode_tokens,
    hidden_width,
    is_sequence_link,
    sequence_targets,
)
from mlink.linkstore.losses import RegressionLoss, sequence_loss, vector_loss


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Link training settings; the defaults are the paper's."""

    epochs: int = 100
    batch_size: int = 32
    lr: float = 0.01
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    val_fraction: float = 0.2
    regression_loss: RegressionLoss = "huber"
    hidden_mult: int = 2
    min_hidden: int = 16  # floor on the hidden width; 0 = the paper's 2 x output size exactly
    dropout: float = 0.5
    seed: int = 0
    patience: int | None = None  # stop after this many epochs without a better checkpoint
    ensemble_epochs: int = 100

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("TrainConfig: epochs, batch_size and lr must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"TrainConfig: val_fraction must be in (0, 1), got {self.val_fraction}"
            )


@dataclass(slots=True)
class TrainReport:
    """What training a group of links produced: best validation score and epoch per link."""

    val_score: list[float]
    best_epoch: list[int]
    seconds: float = 0.0
    history: list[list[float]] = field(default_factory=list)


_epoch_hook = threading.local()


@contextlib.contextmanager
def after_every_epoch(hook: Callable[[], None]) -> Iterator[None]:
    """Call ``hook`` after every epoch of every training this thread runs in the block (after
    the hooks of the blocks around it); the hook ends the training by raising. How a training
    on a worker's own thread stops with the worker: nothing can kill a thread, and the process
    does not exit before the thread returns."""
    previous = getattr(_epoch_hook, "hook", None)

    def both() -> None:
        previous()
        hook()

    _epoch_hook.hook = hook if previous is None else both
    try:
        yield
    finally:
        _epoch_hook.hook = previous


def epoch_done() -> None:
    """Where a training loop may be ended (:func:`after_every_epoch`)."""
    hook = getattr(_epoch_hook, "hook", None)
    if hook is not None:
        hook()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads: links are so small that thread hand-off costs more
    than it saves (measured: a sequence link trains 3-4x faster on one thread than on two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.RMSprop(params, lr=config.lr)


class StackedVecLinks(nn.Module):
    """``S`` independent vec->vec links into one target, evaluated as one batched network."""

    def __init__(
        self,
        in_dims: list[int],
        out_dim: int,
        hidden_mult: int = 2,
        dropout: float = 0.5,
        min_hidden: int = 0,
    ) -> None:
        super().__init__()
        self.in_dims, self.out_dim = list(in_dims), out_dim
        self.hidden_mult, self.min_hidden = hidden_mult, min_hidden
        links, width = len(in_dims), max(in_dims)
        hidden = hidden_width(out_dim, hidden_mult, min_hidden)
        self.register_buffer("mean", torch.zeros(links, 1, width))
        self.register_buffer("std", torch.ones(links, 1, width))
        self.w1 = nn.Parameter(torch.empty(links, width, hidden))
        self.b1 = nn.Parameter(torch.empty(links, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(links, hidden, out_dim))
        self.b2 = nn.Parameter(torch.empty(links, 1, out_dim))
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():  # nn.Linear's default init, per link, with its real fan-in
            for s, dim in enumerate(in_dims):
                bound = 1.0 / math.sqrt(dim)
                self.w1[s].uniform_(-bound, bound)
                self.w1[s, dim:].zero_()
                self.b1[s].uniform_(-bound, bound)
            bound = 1.0 / math.sqrt(hidden)
            self.w2.uniform_(-bound, bound)
            self.b2.uniform_(-bound, bound)

    def fit_normalisation(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(dim=1, keepdim=True))
        std = x.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-3)
        for s, dim in enumerate(self.in_dims):
            std[s, :, dim:] = 1.0
        self.std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(S, B, max_in)`` zero-padded inputs -> ``(S, B, out)`` logits."""
        h = torch.baddbmm(self.b1, (x - self.mean) / self.std, self.w1)
        return torch.baddbmm(self.b2, F.relu(self.dropout(h)), self.w2)

    def extract(self, s: int) -> VecToVecLink:
        """Link ``s`` as a standalone :class:`VecToVecLink` with identical outputs."""
        dim = self.in_dims[s]
        link = VecToVecLink(dim, self.out_dim, self.hidden_mult, self.dropout.p, self.min_hidden)
        with torch.no_grad():
            link.norm.mean.copy_(self.mean[s, 0, :dim])
            link.norm.std.copy_(self.std[s, 0, :dim])
            link.hidden.weight.copy_(self.w1[s, :dim].T)
            link.hidden.bias.copy_(self.b1[s, 0])
            link.out.weight.copy_(self.w2[s].T)
            link.out.bias.copy_(self.b2[s, 0])
        return link.eval()

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, out_dim={self.out_dim}"


def pad_stack(inputs: list[np.ndarray]) -> torch.Tensor:
    """Source matrices of different widths -> one zero-padded ``(S, n, max_width)`` tensor."""
    width = max(x.shape[1] for x in inputs)
    out = torch.zeros(len(inputs), inputs[0].shape[0], width)
    for s, x in enumerate(inputs):
        out[s, :, : x.shape[1]] = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return out


def _vector_scores(
    task: str, logits: torch.Tensor, target: torch.Tensor, config: TrainConfig
) -> torch.Tensor:
    """Per-link validation score (higher is better): agreement if discrete, else -loss."""
    if task == "softmax":
        return (logits.argmax(-1) == target.argmax(-1)).float().mean(dim=1)
    if task == "count":
        return ((logits.round() - target).abs() < 0.5).float().mean(dim=(1, 2))
    return -vector_loss(task, logits, target, config.regression_loss)


def train_stacked(
    inputs: list[np.ndarray],
    target: np.ndarray,
    task: str,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[StackedVecLinks, TrainReport]:
    """Train every vec->vec link into one target at once; keep each link's best checkpoint."""
    torch.manual_seed(config.seed)
    x_all = pad_stack(inputs)
    y_all = torch.from_numpy(np.asarray(target, dtype=np.float32))
    x_tr, y_tr = x_all[:, train_idx], y_all[train_idx]
    x_va, y_va = x_all[:, val_idx], y_all[val_idx].expand(len(inputs), -1, -1)
    model = StackedVecLinks(
        [x.shape[1] for x in inputs],
        y_all.shape[1],
        config.hidden_mult,
        config.dropout,
        config.min_hidden,
    )
    model.fit_normalisation(x_tr)
    optimizer = make_optimizer(model.parameters(), config)
    best = torch.full((len(inputs),), -math.inf)
    best_epoch = [0] * len(inputs)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history: list[list[float]] = []
    gen = torch.Generator().manual_seed(config.seed)
    n, stale = len(train_idx), 0
    for epoch in range(config.epochs):
        model.train()
        for batch in torch.randperm(n, generator=gen).split(config.batch_size):
            logits = model(x_tr[:, batch])
            loss = vector_loss(
                task, logits, y_tr[batch].expand(len(inputs), -1, -1), config.regression_loss
            ).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            score = _vector_scores(task, model(x_va), y_va, config)
        history.append(score.tolist())
        improved = score > best
        if improved.any():
            stale = 0
            best = torch.where(improved, score, best)
            state = model.state_dict()
            for key, value in state.items():
                best_state[key][improved] = value[improved].detach()
            for s in improved.nonzero().flatten().tolist():
                best_epoch[s] = epoch
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch()
        epoch_done()
        if config.patience is not None and stale >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, TrainReport(best.tolist(), best_epoch, history=history)


def train_single(
    link: nn.Module,
    inputs: np.ndarray,
    target: np.ndarray,
    task: str,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[nn.Module, TrainReport]:
    """Train one link of any kind (sequence links go here); keeps the best validation checkpoint."""
    torch.manual_seed(config.seed)
    sequence_in = inputs.dtype.kind in "iu"
    x_all = torch.from_numpy(inputs.astype(np.int64 if sequence_in else np.float32))
    seq_out = is_sequence_link(link)
    if seq_out:
        y_all = sequence_targets(torch.from_numpy(target.astype(np.int64)), link.vocab_size)
    else:
        y_all = torch.from_numpy(target.astype(np.float32))
    if hasattr(link, "norm"):
        link.norm.fit(x_all[train_idx])
    optimizer = make_optimizer(link.parameters(), config)
    best, best_epoch, history = -math.inf, 0, []
    best_state = {k: v.detach().clone() for k, v in link.state_dict().items()}
    gen = torch.Generator().manual_seed(config.seed)
    train_t = torch.from_numpy(train_idx)
    stale = 0
    for epoch in range(config.epochs):
        link.train()
        for batch in train_t[torch.randperm(len(train_t), generator=gen)].split(config.batch_size):
            x, y = x_all[batch], y_all[batch]
            if seq_out:
                loss = sequence_loss(link(x, y.clamp_min(0)), y)  # teacher forcing
            else:
                loss = vector_loss(task, link(x)[None], y[None], config.regression_loss)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        link.eval()
        with torch.no_grad():
            x, y = x_all[val_idx], y_all[val_idx]
            if seq_out:
                pred = decode_tokens(link(x), link.vocab_size)
                real = torch.where(y[:, :-1] < 0, torch.full_like(pred, link.vocab_size), y[:, :-1])
                score = (
                    float((pred == real).all(dim=1).float().mean())
                    - float(sequence_loss(link(x, y.clamp_min(0)), y)) * 1e-3
                )
            else:
                score = float(_vector_scores(task, link(x)[None], y[None], config)[0])
        history.append([score])
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in link.state_dict().items()}
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch()
        epoch_done()
        if config.patience is not None and stale >= config.patience:
            break
    link.load_state_dict(best_state)
    return link.eval(), TrainReport([best], [best_epoch], history=history)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/validation split; at least one sample on each side."""
    if n < 2:
        raise ValueError(
            f"need at least 2 training samples to hold out a validation split, got {n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
