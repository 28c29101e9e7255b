"""When the controller plans: the questions it asks of the replayed control state before it
plans again (pure functions of the state, tested without a broker)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlink.linkstore.streamplan import agreement_targets
from mlink.operators.controller import unmet_models
from mlink.operators.relearn import relearning
from mlink.operators.runtime import MLink
from mlink.operators.state import ControlState
from mlink.operators.stream_decision import carried_corrections, live_corrections, target_misses
from mlink.topics.records import ControlMessage

__all__ = [
    "Replan",
    "declared_cost_change",
    "links_in_force",
    "planned_for_requested",
    "relearn_holds",
    "replan_for",
    "target_replan",
]


@dataclass(frozen=True, slots=True)
class Replan:
    """A plan to make: why (None for a new budget or link version, which need no reason), the
    per-model corrections to plan with, and the models found below their target."""

    reason: str | None
    corrections: dict[str, float]
    missed: list[str] = field(default_factory=list)


def planned_for_requested(state: ControlState) -> bool:
    """Whether the plan in force was made for the requested budget from the links wanted (the
    newest, or the pinned)."""
    return (
        state.epoch > 0
        and state.budget == state.requested_budget
        and state.link_version == state.wanted_links
    )


def links_in_force(state: ControlState) -> bool:
    """Whether the plan in force already uses the links wanted (the newest, or the pinned)."""
    return state.epoch > 0 and state.link_version == state.wanted_links


def relearn_holds(state: ControlState) -> int | None:
    """The lost version the controller must not plan from while the links are learned again,
    or None. Asked of the newest announced version, not of the wanted one: a pin made since the
    relearn plan (which ended every earlier pin) is the operator's call on a version
    ``mlink links`` found whole, and is planned from."""
    if state.pinned_links is not None:
        return None
    return relearning(state.plan_extra, state.link_version, state.latest_links)


def target_replan(mlink: MLink) -> tuple[str, dict[str, float], list[str]] | None:
    """Why the current stream plan must change, the corrections to plan with and the models
    below target, when live probes show a model below its accuracy target with confidence and
    the plan in force did not already find it out of reach within the compute bound; else
    None (every probe report would otherwise re-plan the same plan again)."""
    state = mlink.state
    if not mlink.settings.links.stream or state.schedule is None or not state.live_agreement:
        return None
    try:
        targets = agreement_targets(state.budget, mlink.model_names)
    except ValueError:
        return None
    misses = target_misses(
        state.schedule, state.live_agreement, state.live_probes, targets, counts=state.live_counts
    )
    misses = {m: why for m, why in misses.items() if m not in unmet_models(state.plan_extra)}
    if not misses:
        return None
    corrections = live_corrections(
        state.plan_extra,
        state.live_agreement,
        state.live_probes,
        sorted(state.live_agreement),
        counts=state.live_counts,
        started=state.live_started,
    )
    return "; ".join(misses[m] for m in sorted(misses)), corrections, sorted(misses)


def replan_for(message: ControlMessage, mlink: MLink, issued: int) -> Replan | None:
    """What the controlling worker must plan on ``message``, already applied to the replayed
    state, or None. ``issued`` is the epoch of the last plan this controller sent (0 when it
    has sent none, as after a failover).

    An agreement report on a plan older than ``issued`` re-plans nothing: a backlog of probes
    can bring a second report on the old plan into the log before the new plan, and re-planning
    on it would run the same model more again (docs/stream-synthesis.md). A budget or link
    version the plan in force already has re-plans nothing either: every worker restates the
    config's budget, and a version can be announced while another is pinned."""
    state = mlink.state
    if message.kind == "agreement":
        if message.epoch < issued:
            return None
        replan = target_replan(mlink)
        return None if replan is None else Replan(*replan)
    if message.kind == "budget" and planned_for_requested(state):
        return None
    if message.kind == "link_version" and links_in_force(state):
        return None
    if message.kind in ("budget", "link_version"):  # the guard's evidence stands: no flapping
        return Replan(None, carried_corrections(state.plan_extra))
    return None


def declared_cost_change(
    plan_extra: Mapping[str, Any], declared: Mapping[str, Mapping[str, float]]
) -> str | None:
    """Why the plan in force must be made again for the config's declared costs, or None: a
    restart on a config whose ``cost.ms`` changed brings no control message that would make
    the controller plan again, and the plan stayed priced on costs no config declares."""
    priced = plan_extra.get("model_ms")
    if not isinstance(priced, Mapping):
        return None
    changed = {
        m: (priced[m], cost["ms"])
        for m, cost in sorted(declared.items())
        if "ms" in cost
        and isinstance(priced.get(m), int | float)
        and not math.isclose(float(priced[m]), float(cost["ms"]), rel_tol=1e-9, abs_tol=1e-9)
    }
    if not changed:
        return None
    said = ", ".join(f"{m} {old:g} -> {new:g} ms" for m, (old, new) in changed.items())
    return f"the config declares other model costs than the plan in force was made for: {said}"
