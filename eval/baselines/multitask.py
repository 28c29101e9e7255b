"""The paper's multi-task baseline: one small CNN on a thumbnail with a head per model, trained on
the models' outputs; it replaces all (or all inactive) models on the evaluation frames.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mlink.eval.baselines.common import (
    MethodResult,
    check_budget,
    evaluate_outputs,
    method_result,
    model_ms,
    prior_outputs,
)
from mlink.eval.workload import Workload
from mlink.linkstore.links import activate
from mlink.linkstore.losses import vector_loss
from mlink.linkstore.rows import decode_rows
from mlink.linkstore.selection import Problem, select
from mlink.linkstore.training import split_indices, torch_threads
from mlink.topics.specs import OutputSpec, SequenceSpec, encode_batch

__all__ = ["MultiTaskNet", "multitask"]


class MultiTaskNet(nn.Module):
    """A small CNN: three 3x3 conv layers (16, 32, 32 channels; stride 2 while the map is at
    least 16 px), pooled to 4x4, a 64-unit shared layer, and one linear head per model."""

    def __init__(self, channels: int, height: int, width: int, head_dims: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = channels, min(height, width)
        for c_out in (16, 32, 32):
            stride = 2 if side >= 16 else 1
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
            c_in, side = c_out, (side + stride - 1) // stride
        self.trunk = nn.Sequential(
            *layers,
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(c_in * 16, 64),
            nn.ReLU(),
            nn.Dropout(0.2),
        )
        self.heads = nn.ModuleList(nn.Linear(64, d) for d in head_dims)
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk((x - self.mean) / self.std)
        return [head(h) for head in self.heads]


@dataclass(slots=True)
class _Head:
    model: str
    spec: OutputSpec
    task: str
    mean: np.ndarray
    std: np.ndarray

    def target(self, encoded: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((encoded - self.mean) / self.std).astype(np.float32))

    def decode(self, logits: torch.Tensor) -> Any:
        rows = activate(self.task, logits).numpy()
        return decode_rows(self.spec, rows * self.std + self.mean)


def _heads(workload: Workload, train: np.ndarray) -> tuple[list[_Head], dict[str, np.ndarray]]:
    heads, encoded = [], {}
    for m, spec in workload.specs.items():
        if isinstance(spec, SequenceSpec):
            continue  # no sequence decoder here: such models fall back to their prior
        enc = encode_batch(spec, workload.outputs[m])
        encoded[m] = enc
        task = spec.link_task
        if task in ("softmax", "sigmoid"):
            mean, std = np.zeros(enc.shape[1]), np.ones(enc.shape[1])
        else:  # regression (linear, count, boxes): standardise on the training frames
            mean = enc[train].mean(axis=0)
            std = np.maximum(enc[train].std(axis=0), 1e-3)
        heads.append(_Head(m, spec, task, mean.astype(np.float32), std.astype(np.float32)))
    return heads, encoded


def _mtl_loss(
    heads: Sequence[_Head], outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
) -> torch.Tensor:
    return sum(
        vector_loss(h.task, o[None], y[None])[0]
        for h, o, y in zip(heads, outputs, targets, strict=True)
    )


def _cnn_ms(net: nn.Module, thumb: np.ndarray, repeats: int = 100) -> float:
    """Single-frame forward on one thread, thumbnail-to-tensor included: median ms per call."""
    net.eval()
    times = []
    with torch_threads(1), torch.no_grad():
        for r in range(repeats + 10):
            start = time.perf_counter()
            net(torch.from_numpy(thumb[None]))
            if r >= 10:
                times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _train_mtl(
    thumbs: np.ndarray,
    heads: Sequence[_Head],
    encoded: Mapping[str, np.ndarray],
    fit: np.ndarray,
    val: np.ndarray,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> MultiTaskNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    _, c, h, w = thumbs.shape
    net = MultiTaskNet(c, h, w, [hd.spec.link_dim for hd in heads])
    x = torch.from_numpy(thumbs)
    with torch.no_grad():
        net.mean.copy_(x[fit].mean(dim=(0, 2, 3), keepdim=True))
        net.std.copy_(x[fit].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))
    targets = [hd.target(encoded[hd.model]) for hd in heads]
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    best, best_state = math.inf, copy.deepcopy(net.state_dict())
    for _ in range(epochs):
        net.train()
        for batch in np.array_split(rng.permutation(fit), max(1, math.ceil(len(fit) / batch_size))):
            b = torch.from_numpy(batch)
            loss = _mtl_loss(heads, net(x[b]), [y[b] for y in targets])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = torch.from_numpy(val)
            val_loss = float(_mtl_loss(heads, net(x[v]), [y[v] for y in targets]))
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return net.eval()


def _mtl_predict(net: nn.Module, heads: Sequence[_Head], thumbs: np.ndarray, idx: np.ndarray):
    with torch.no_grad():
        outs = net(torch.from_numpy(thumbs[idx]))
    return {hd.model: list(hd.decode(o)) for hd, o in zip(heads, outs, strict=True)}


def multitask(
    workload: Workload,
    thumbs: np.ndarray,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    budget_ms: float,
    epochs: int = 150,
    seed: int = 0,
    thumb_ms: float = 0.0,
    val_fraction: float = 0.2,
    threads: int = 1,
) -> MethodResult:
    """The paper's multi-task baseline: one small CNN (:class:`MultiTaskNet`) on ``thumbs``
    (``(n, C, H, W)`` float32 in [0, 1], one per workload frame), a head per model trained on the
    models' encoded outputs over the training part (soft cross-entropy for softmax, BCE for
    sigmoid, Huber on standardised values for linear, count and boxes), best epoch by validation
    loss on ``val_fraction`` of the training frames.

    Its cost is the measured single-frame, one-thread CNN forward plus ``thumb_ms``. The active set
    runs for real alongside it: chosen by the exact selector with each inactive model scored by
    its head's validation agreement, within what the budget leaves after the CNN. An empty set
    (the CNN replaces every model) is allowed, so the selector compares "MTL for all" with "MTL
    for the models not in an active set" on validation. Sequence outputs have no head and get
    their prior. When the CNN alone exceeds the budget the result is reported as it is, over
    budget (``feasible`` is False).

    Training uses ``threads`` intra-op threads (default 1: the net is small, and on a loaded
    machine OpenMP threads that wait on each other made 2 threads up to 10x slower than 1).
    """
    started = time.perf_counter()
    check_budget(workload, budget_ms)
    thumbs = np.ascontiguousarray(thumbs, dtype=np.float32)
    if thumbs.ndim != 4 or thumbs.shape[0] != workload.n_frames:
        raise ValueError(
            f"thumbs must be (n_frames={workload.n_frames}, C, H, W), got {thumbs.shape}"
        )
    train = np.asarray(train_idx, dtype=np.int64)
    test = np.asarray(test_idx, dtype=np.int64)
    fit_local, val_local = split_indices(len(train), val_fraction, seed)
    fit, val = train[fit_local], train[val_local]
    heads, encoded = _heads(workload, fit)
    priors = prior_outputs(workload, train)
    with torch_threads(threads):
        net = _train_mtl(thumbs, heads, encoded, fit, val, epochs, seed)
    train_seconds = time.perf_counter() - started
    overhead = _cnn_ms(net, thumbs[test[0] if len(test) else 0]) + thumb_ms

    val_pred = _mtl_predict(net, heads, thumbs, val)
    for m in workload.models:
        val_pred.setdefault(m, [priors[m]] * len(val))
    _, val_agree = evaluate_outputs(workload, val, val_pred)
    ms = model_ms(workload)
    room = budget_ms - overhead
    if room > 0:
        plan = select(
            Problem(
                models=workload.models,
                costs={m: {"ms": ms[m]} for m in workload.models},
                budget={"ms": room},
                agreement=lambda active, target: val_agree[target],
                min_active=0,
            )
        )
        active, val_acc = sorted(plan.active), plan.objective
        note = "MTL for all models" if not active else "MTL for the models not in the active set"
    else:
        active, val_acc = [], float(np.mean(list(val_agree.values())))
        note = f"over budget: the CNN + thumbnail alone cost {overhead:.3f} ms/frame"
    test_pred = _mtl_predict(net, heads, thumbs, test)
    for m in workload.models:
        test_pred.setdefault(m, [priors[m]] * len(test))
    _, per_model = evaluate_outputs(
        workload, test, {m: p for m, p in test_pred.items() if m not in active}
    )
    heads_only, heads_per_model = evaluate_outputs(workload, test, test_pred)
    cost = overhead + sum(ms[m] for m in active)
    return method_result(
        workload,
        "Multi-task learning",
        budget_ms,
        cost,
        active,
        per_model,
        f"{note}; CNN+thumbnail {overhead:.3f} ms/frame; validation accuracy {val_acc:.3f}; "
        f"trained in {train_seconds:.1f} s",
        started,
        {
            "cnn_ms": overhead - thumb_ms,
            "thumb_ms": thumb_ms,
            "val_agreement": val_agree,
            "val_accuracy": val_acc,
            "train_seconds": train_seconds,
            # For reference (not a plan the budget chose): the CNN replacing every model.
            "heads_only_accuracy": heads_only,
            "heads_only_per_model": heads_per_model,
        },
        predicted=val_acc,
    )
