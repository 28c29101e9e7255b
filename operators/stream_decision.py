"""The controller's stream plan: a per-frame schedule from a link version's curves.

Each model runs on a period of its own (1: every frame, 0: probes only) and is synthesized in
between by the mode the curves say agrees best for its cost (docs/stream-synthesis.md). Plans
maximise the lower confidence bound of the expected agreement, as the offline bench does: the
estimates come from a few dozen warm-up frames and over-promise most where data is thinnest.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from mlink.linkstore.bundle import LoadedLinks
from mlink.linkstore.cost_headroom import Fragile, cost_headroom
from mlink.linkstore.liveguard import (
    PRIOR_PROBES,
    corrected,
    forecast,
    miss_reason,
    unseen_share,
)
from mlink.linkstore.problem import InfeasibleBudget
from mlink.linkstore.schedule import EXTRA_KEY, Schedule
from mlink.linkstore.streamplan import LinksEstimate, StreamPlan, plan_for_budget, plan_for_targets
from mlink.operators.state import ControlState
from mlink.topics.control import MAX_FACTOR
from mlink.topics.records import ControlMessage

__all__ = [
    "CORR",
    "Z",
    "carried_corrections",
    "forecast_bounds",
    "fragile_reason",
    "headroom_extra",
    "links_estimate",
    "live_corrections",
    "live_forecast",
    "model_shares",
    "plan_estimate",
    "plan_promise",
    "state_forecast",
    "stream_decision",
    "target_misses",
]

log = logging.getLogger("mlink.controller")

Z = 1.0  # width of the lower confidence bound, in standard errors
CORR = 4.0  # how far the per-lag estimates of one model are taken as correlated


def links_estimate(links: LoadedLinks) -> LinksEstimate:
    """The paper's links as one more mode: the cross-fitted oracle and the measured cost of an
    ensemble over the models that run."""

    def estimate(active: frozenset[str], target: str) -> tuple[float, int, float]:
        ms = sum(links.link_costs.get((s, target), {}).get("ms", 0.0) for s in active)
        ms += links.ensemble_costs.get(target, {}).get("ms", 0.0)
        return float(links.oracle(active, target)), links.n_samples, ms

    return estimate


def stream_decision(
    models: Sequence[str],
    costs: Mapping[str, Mapping[str, float]],
    links: LoadedLinks,
    budget: Mapping[str, float],
    budget_ms: float | None,
    targets: Mapping[str, float],
    epoch: int,
    *,
    probe_every: int,
    probe_stride: int = 0,
    corrections: Mapping[str, float] | None = None,
    cost_table: str = "measured",
) -> ControlMessage:
    """The control message of a stream plan for ``budget_ms`` or ``targets``: with both, the
    most accurate plan within the bound whose models meet their targets; with targets alone,
    the cheapest that meets them (:mod:`mlink.linkstore.streamplan`)."""
    ms = {m: float(costs[m].get("ms", 0.0)) for m in models}
    common = {
        "probe_every": probe_every,
        "probe_stride": probe_stride,
        "links": links_estimate(links),
        "z": Z,
        "corr": CORR,
        "corrections": corrections,
    }
    plan: StreamPlan
    if targets and budget_ms is not None:  # a bound to spend, targets as floors
        plan = plan_for_budget(
            links.curves, ms, budget_ms, objective="lower", floors=targets, **common
        )
    elif targets:
        plan = plan_for_targets(links.curves, ms, targets, **common)
    elif budget_ms is not None:
        plan = plan_for_budget(links.curves, ms, budget_ms, objective="lower", **common)
    else:
        raise ValueError("a stream plan needs a compute budget (ms or fraction) or targets")
    if not plan.feasible:
        raise InfeasibleBudget(
            plan.reason,
            budget=dict(budget),
            cheapest_budget={},
            plan=frozenset(models),
        )
    schedule = plan.schedule
    running = sorted(m for m, k in schedule.periods.items() if k > 0)
    described = {m: plan.describe(m) for m in models}
    log.info(
        "epoch %d: stream plan, expected agreement %.3f at %.2f ms/frame (budget %s ms) on "
        "model costs %s: %s",
        epoch,
        plan.estimate,
        plan.cost_ms,
        "none" if budget_ms is None else f"{budget_ms:.2f}",
        {m: round(v, 1) for m, v in ms.items()},
        "; ".join(f"{m}: {d}" for m, d in described.items()),
    )
    extra_fragile = {}
    if not targets and budget_ms is not None and cost_table != "declared":  # declared: no noise
        extra_fragile = headroom_extra(
            epoch,
            lambda: cost_headroom(plan, links.curves, ms, budget_ms, objective="lower", **common),
        )
    synthesized = {m: c.synthesized for m, c in plan.choices.items() if c.synthesized is not None}
    return ControlMessage(
        kind="active_set",
        epoch=epoch,
        issued_at=time.time(),
        active=tuple(running),
        budget=dict(budget),
        link_version=links.version,
        probe_every=probe_every,
        extra={
            "objective": plan.estimate,
            "cost": {"ms": plan.cost_ms},
            "predicted": {m: c.estimate for m, c in plan.choices.items()},
            "predicted_synthesized": synthesized,
            # each synthesized model's run share (probes and a cascade's runs included), which
            # a forecast from probes keeps (liveguard.forecast)
            "runs": {m: c.runs for m, c in plan.choices.items() if c.synthesized is not None},
            "lower": plan.lower(),
            # what the plan promises, each model at its forecast bound (Choice.bound)
            "forecast": plan.forecast(),
            "plan": described,
            "cost_table": cost_table,
            # the costs and budget the plan was chosen on: plans flip when relative costs move
            "model_ms": ms,
            "budget_ms": budget_ms,
            "corrections": dict(corrections or {}),
            EXTRA_KEY: schedule.to_extra(),
            **extra_fragile,
        },
    )


def headroom_extra(epoch: int, check: Callable[[], Fragile | None]) -> dict[str, Any]:
    """Run a plan's cost headroom ``check`` and return the ``active_set`` extra it adds
    (``{"fragile": ...}``, or nothing when the plan has room), logging a warning when it has
    none. Advisory: whatever the check does, even raise, the plan stands."""
    try:
        fragile = check()
    except Exception:
        log.exception("epoch %d: checking the plan's room for a cost rise failed", epoch)
        return {}
    if fragile is None:
        return {}
    log.warning("epoch %d: %s", epoch, fragile_reason(fragile))
    return {"fragile": fragile.to_extra()}


def fragile_reason(fragile: Fragile | Mapping[str, Any]) -> str:
    """What an operator reads when the plan has no room for a small rise in model costs (a
    :class:`~mlink.linkstore.cost_headroom.Fragile` or its ``extra["fragile"]`` form)."""
    f = fragile.to_extra() if isinstance(fragile, Fragile) else fragile
    try:
        return _fragile_text(f)
    except (TypeError, ValueError, AttributeError, KeyError):  # an old or forged record's shape
        return "no room for costs to rise (the detail of this plan's record is unreadable)"


def _fragile_text(f: Mapping[str, Any]) -> str:
    rise = f"{float(f.get('cost_rise') or 0):.0%}"
    if f.get("lower_then") is None:
        return f"model costs {rise} higher would fit no plan in this budget"
    changes = "; ".join(f"{m}: {what}" for m, what in sorted((f.get("changes") or {}).items()))
    basis = f.get("basis") or "lower bound"
    return (
        f"model costs {rise} higher would switch to a plan with mean {basis} "
        f"{float(f['lower_then']):.3f} (now {float(f.get('lower_now') or 0):.3f}): {changes}. "
        "A budget with more room keeps this plan when live timings move"
    )


def target_misses(
    schedule: Schedule,
    live: Mapping[str, float],
    probes: int,
    targets: Mapping[str, float],
    *,
    counts: Mapping[str, float] | None = None,
    z: float = Z,
    min_probes: float = 2,
) -> dict[str, str]:
    """The models whose agreement over the run (real runs count 1, synthesized frames at their
    live probe agreement) is below their target even at the upper confidence bound, each with
    the reason the controller publishes when it turns them back on. ``counts``: effective probes
    per model (default ``probes`` for every model)."""
    out = {}
    for model, target in targets.items():
        n = (counts or {}).get(model, probes)
        if model not in live or n < min_probes or model not in schedule.periods:
            continue
        why = miss_reason(model, schedule.share(model), float(live[model]), n, target, z)
        if why:
            out[model] = why
    return out


def live_forecast(
    extra: Mapping[str, Any],
    live: Mapping[str, float],
    probes: int,
    *,
    counts: Mapping[str, float] | None = None,
    started: Mapping[str, float] | None = None,
) -> float | None:
    """The stream plan's expected agreement (all models) with each synthesized model rescaled
    by its probes (:func:`~mlink.linkstore.liveguard.forecast`, the corrections of
    :func:`live_corrections`); None for a plan without per-model estimates or run shares (the
    paper's links, or a plan published before run shares were) or with malformed ones."""
    estimates, runs = extra.get("predicted") or {}, extra.get("runs")
    if not estimates or runs is None:
        return None
    try:  # whatever a control message says, a status read or the replay carries on
        base = extra.get("corrections") or {}
        factors = live_corrections(
            extra, live, probes, sorted(live), counts=counts, started=started
        )
        lower = forecast_bounds(extra)
        value = forecast(
            {m: float(v) for m, v in estimates.items()},
            {m: float(v) for m, v in runs.items()},
            {m: float(v) for m, v in (extra.get("predicted_synthesized") or {}).items()},
            {m: f / float(base.get(m, 1.0)) for m, f in factors.items()},
            None if lower is None else {m: float(v) for m, v in lower.items()},
            {
                m: unseen_share(
                    float((counts or {}).get(m, probes)) if m in live else 0.0,
                    PRIOR_PROBES,
                    m in base,
                )
                for m in estimates
            },
        )
    except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def state_forecast(state: ControlState) -> float | None:
    """:func:`live_forecast` of the plan and the probe report ``state`` holds (what ``mlink
    status``, the worker's gauge and the run summary show)."""
    return live_forecast(
        state.plan_extra,
        state.live_agreement,
        state.live_probes,
        counts=state.live_counts,
        started=state.live_started,
    )


def forecast_bounds(extra: Mapping[str, Any]) -> Any:
    """What an ``active_set`` message's plan promises per model: its forecast bounds; plans
    published before them carry their lower bounds, older ones neither (None)."""
    return extra.get("forecast") or extra.get("lower")


def plan_promise(extra: Mapping[str, Any]) -> float | None:
    """What a stream plan promises over all models before any probe: its forecast bounds
    (:func:`forecast_bounds`) where synthesized, 1 where it runs, as :func:`live_forecast` weighs
    them; None for a plan that carries no bounds (the paper's links, older plans). Its estimate
    (:func:`plan_estimate`) over-promises where the content moves after the warm-up."""
    return None if forecast_bounds(extra) is None else live_forecast(extra, {}, 0)


def plan_estimate(extra: Mapping[str, Any]) -> float | None:
    """A plan's expected agreement over all models (``objective`` of its ``active_set``), or
    None when it carries none or not a number in [0, 1]."""
    value = extra.get("objective")
    return float(value) if type(value) in (int, float) and 0.0 <= value <= 1.0 else None


def model_shares(value: Any, models: Collection[str] | None = None) -> dict[str, float]:
    """The ``{model: share in [0, 1]}`` entries of a control message's per-model field (of
    ``models`` only, when given); anything else in it is left out, never raised on: workers and
    ``mlink status`` read the same fields of the same messages and must agree on them."""
    if not isinstance(value, Mapping):
        return {}
    return {
        str(m): float(v)
        for m, v in value.items()
        if (models is None or m in models)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and 0.0 <= v <= 1.0
    }


def carried_corrections(extra: Mapping[str, Any]) -> dict[str, float]:
    """The guard's factors the current plan was made with (``extra["corrections"]``), for a
    re-plan that brings no new probe evidence (new links, a new budget): dropping them would
    synthesize again a model the guard had turned back on, and it would flap."""
    base = extra.get("corrections")
    if not isinstance(base, Mapping):
        return {}
    return {
        str(m): float(v)
        for m, v in base.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= MAX_FACTOR
    }


def live_corrections(
    extra: Mapping[str, Any],
    live: Mapping[str, float],
    probes: int,
    models: Sequence[str],
    prior_probes: float = PRIOR_PROBES,
    *,
    counts: Mapping[str, float] | None = None,
    started: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Factors on each listed model's synthesized agreement for the next plan: live over
    planned, shrunk towards 1 by ``prior_probes``, on top of the factor the model's option
    started with (``started``; default the factor the current plan was made with,
    ``extra["corrections"]``), so they compound across re-plans and fail-overs and no probe
    counts twice."""
    planned = extra.get("predicted_synthesized") or {}
    out = carried_corrections(extra)
    for model in models:
        p, mean = planned.get(model), live.get(model)
        n = (counts or {}).get(model, probes)
        if not p or mean is None or n <= 0:
            continue
        now = out.get(model, 1.0)
        start = (started or {}).get(model, now)
        out[model] = corrected(float(mean), float(p), n, prior_probes, now, start)
    return out
