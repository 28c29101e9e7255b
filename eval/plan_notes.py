"""What the controller said about its plans during a run, for the run summary.

`mlink status` shows the plan in force and why it was made; a finished run's summary is read
after the pipeline is gone, so it says the same from the control log: a budget or target no plan
met (every model ran), a re-plan and its reason, models left below target, a plan with no room
for costs to rise, lost links learned again, and a pin the controller ended.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlink.operators.controller import UNMET
from mlink.operators.relearn import RELEARN_KEY
from mlink.operators.stream_decision import fragile_reason
from mlink.topics.control import PIN_KEY
from mlink.topics.records import ControlMessage

__all__ = ["plan_notes"]


def plan_notes(control: Iterable[ControlMessage], since: float | None = None) -> list[str]:
    """One line per thing the control log said about a plan, in log order; nothing for plans
    made as asked. Only the last plan's lack of room is said: it is the one a user would
    change the budget for. ``since``: only messages issued from then on (a broker that
    outlives a run keeps earlier runs' plans on the control topic)."""
    notes: list[str] = []
    epoch_seen, in_force = 0, None
    for message in control:
        if since is not None and message.issued_at < since:
            continue
        extra = message.extra or {}
        if message.kind == "link_version" and extra.get(PIN_KEY) is False and "reason" in extra:
            notes.append(f"pin on v{message.link_version} ended: {extra['reason']}")
        if message.kind != "active_set":
            continue
        if message.epoch <= epoch_seen:  # a duplicate every worker skipped (stale)
            continue
        epoch_seen = message.epoch
        restated = in_force is not None and (message.active, message.link_version, extra) == (
            in_force.active,
            in_force.link_version,
            in_force.extra or {},
        )  # the plan in force published again (mlink resign): no new plan
        in_force = message
        if restated:
            continue
        epoch = f"epoch {message.epoch}"
        if extra.get("infeasible"):
            notes.append(f"{epoch}: every model ran, no plan met the budget: {extra['infeasible']}")
        if RELEARN_KEY in extra:
            notes.append(f"{epoch}: {extra.get('replan_reason') or 'links learned again'}")
        elif extra.get("replan_reason"):
            notes.append(f"{epoch} re-planned: {extra['replan_reason']}")
        if extra.get(UNMET):
            notes.append(f"{epoch}: below target within the compute bound: {extra[UNMET]}")
    fragile = (in_force.extra or {}).get("fragile") if in_force is not None else None
    if isinstance(fragile, dict):  # only the plan in force's
        epoch = f"epoch {in_force.epoch}"
        notes.append(f"{epoch}, no room in the budget: {fragile_reason(fragile)}")
    return notes
