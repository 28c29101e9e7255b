"""Running a plan over the evaluation frames in stream order: what it kept and what it spent."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from mlink.eval.baselines.common import MethodResult
from mlink.eval.temporal.context import Context
from mlink.eval.temporal.geometry import change_distance, stream_segments
from mlink.eval.temporal.planning import Plan
from mlink.eval.temporal.policy import REUSE, Policy
from mlink.linkstore.metrics import agreement
from mlink.linkstore.rows import decode_rows

__all__ = ["measure"]


def _test_segments(ctx: Context, test: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Test frames in runs of one stream, each with its seed: the stream's previous frame if it
    is a training frame (every model ran there), else -1 (the run starts with a refresh)."""
    train = set(ctx.train.tolist())
    streams = ctx.wl.streams
    prev = {(streams[i], int(ctx.pos[i])): i for i in train}
    out = []
    for seg in stream_segments(streams, ctx.pos, test):
        first = int(seg[0])
        seed = prev.get((streams[first], int(ctx.pos[first]) - 1), -1)
        out.append((seed, seg))
    return out


def _run_policy(
    ctx: Context,
    t: str,
    policy: Policy,
    active: frozenset[str],
    test: np.ndarray,
    segments: list[tuple[int, np.ndarray]],
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Per-frame agreement of ``t`` on ``test`` (test order), its total ms, and what it did."""
    col = {int(i): c for c, i in enumerate(test.tolist())}
    score = np.ones(len(test))
    if policy.kind == "prior":
        return ctx.prior_agreement(t, test), 0.0, {"runs": 0}
    if policy.kind == "link":
        per = ctx.test_oracle(test).per_sample(active, t)
        return per, ctx.plain_link_cost(active, t) * len(test), {"runs": 0}
    tl = ctx.trained_temporal
    link_ms = tl.link_ms.get(t, 0.0) if tl is not None else 0.0
    then, now = [], []  # synthesized frames and their refresh frames
    runs = 0
    total = 0.0
    deferred = 0
    if policy.kind == "periodic":
        k = policy.period
        for seed, seg in segments:
            last = seed
            for j, i in enumerate(seg.tolist()):
                due = (j + 1) % k == 0 if seed >= 0 else j % k == 0
                if due:
                    runs, last = runs + 1, i
                else:
                    then.append(last)
                    now.append(i)
        total = runs * ctx.ms[t] + (0.0 if policy.mode == REUSE else len(now) * link_ms)
    else:
        kind, src = policy.signal
        cap = policy.period
        sig_ms = ctx.signal_ms if kind == "raw" else link_ms
        same = kind == "link" and policy.mode == src
        for seed, seg in segments:
            tokens = 0.0
            last = seed
            for i in seg.tolist():
                tokens = min(tokens + policy.rate, max(ctx.config.bucket, 1.0))
                if last < 0:  # unseeded run of frames: refresh first
                    runs, last = runs + 1, i
                    continue
                total += sig_ms
                lag = int(ctx.pos[i] - ctx.pos[last])
                if kind == "raw":
                    sigma = change_distance(ctx.enc[src][i] - ctx.enc[src][last], ctx.scale[src])
                else:
                    pred = tl.predict(t, src, np.array([last]), np.array([i]))[0]
                    sigma = change_distance(pred - ctx.enc[t][last], ctx.scale[t])
                want = lag >= cap or sigma > policy.threshold
                if want and tokens >= 1.0:
                    tokens -= 1.0
                    runs, last = runs + 1, i
                    continue
                deferred += int(want)
                then.append(last)
                now.append(i)
                if policy.mode != REUSE and not same:
                    total += link_ms
        total += runs * ctx.ms[t]
    a, b = np.array(then, dtype=np.int64), np.array(now, dtype=np.int64)
    if len(b):
        if policy.mode == REUSE:
            agree = ctx.reuse_agree(t, a, b)
        else:
            spec = ctx.specs[t]
            pred = decode_rows(spec, tl.predict(t, policy.mode, a, b))
            agree = agreement(spec, pred, [ctx.wl.outputs[t][i] for i in b])
        score[[col[int(i)] for i in b]] = agree
    return score, total, {"runs": runs, "deferred": deferred}


def _spend_leftover(ctx: Context, plan: Plan, budget: float) -> Plan:
    """Raise the token-bucket refill rates of triggered targets with the budget the plan left
    unused (shared in proportion to their planned model ms), so fewer triggers are deferred
    when the test part changes more often than the training part did."""
    triggered = {m: p for m, p in plan.policies.items() if p.kind == "trigger"}
    spend = {m: ctx.ms[m] * p.rate for m, p in triggered.items()}
    leftover = budget - plan.cost
    if leftover <= 0 or not sum(spend.values()):
        return plan
    policies = dict(plan.policies)
    for m, p in triggered.items():
        extra = leftover * spend[m] / sum(spend.values()) / ctx.ms[m]
        policies[m] = replace(p, rate=min(1.0, p.rate + extra * (1 - 1e-9)))
    return Plan(plan.active, policies, plan.estimate, plan.cost)


def measure(
    ctx: Context,
    method: str,
    budget: float,
    plan: Plan,
    test_idx: Sequence[int],
    started: float,
) -> MethodResult:
    test = np.sort(np.asarray(test_idx, dtype=np.int64))
    segments = _test_segments(ctx, test)
    plan = _spend_leftover(ctx, plan, budget)
    per_model, total, runs, notes, deferred = {}, 0.0, {}, [], {}
    for m in ctx.models:
        if m in plan.active:
            per_model[m], runs[m] = 1.0, len(test)
            total += ctx.ms[m] * len(test)
            continue
        policy = plan.policies[m]
        score, ms, info = _run_policy(ctx, m, policy, plan.active, test, segments)
        per_model[m] = float(score.mean()) if len(test) else 1.0
        runs[m] = info["runs"]
        if info.get("deferred"):
            deferred[m] = info["deferred"]
        total += ms
        notes.append(f"{m}: {policy.describe()}")
    cost = total / max(1, len(test))
    active = sorted(plan.active | {m for m, p in plan.policies.items() if p.period == 1})
    accuracy = float(np.mean(list(per_model.values())))
    run_rate = {m: r / max(1, len(test)) for m, r in runs.items()}
    return MethodResult(
        method=method,
        budget_ms=float(budget),
        accuracy=accuracy,
        compute_saved=float(1.0 - cost / ctx.full) if ctx.full else 0.0,
        cost_ms=float(cost),
        active=active,
        per_model=per_model,
        run_rate=run_rate,
        predicted_accuracy=plan.estimate,
        notes="; ".join(notes),
        seconds=time.perf_counter() - started,
        details={
            "train_estimate": plan.estimate,
            "planned_ms": plan.cost,
            "run_rate": run_rate,
            "deferred_triggers": deferred,
            "policies": {m: p.describe() for m, p in plan.policies.items()},
            "training_seconds": dict(ctx.seconds),
        },
    )
