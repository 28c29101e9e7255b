"""The ``budget`` messages the controller itself sends: an edited config's budget restated on
restart, and the budget in force restored when no plan meets a requested one."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from mlink.operators.relearn import every_model_plan
from mlink.operators.state import BUDGET_ORIGIN, REFUSED_KEY, ControlState
from mlink.topics.records import ControlMessage

__all__ = ["all_models_message", "config_budget_message", "refusal_message"]


def config_budget_message(
    state: ControlState, budget: Mapping[str, float]
) -> tuple[ControlMessage | None, str | None]:
    """What a starting worker publishes so that an edited config's ``budget`` takes effect, and
    why it publishes nothing when the budget in force is a run-time one.

    A plan was made (epoch > 0) for another budget than the config's, and no ``mlink budget``
    command set the budget in force: the config was edited, so the worker restates its budget
    on the control topic (marked as the config's), and the controller plans for it. A budget
    set with ``mlink budget`` stays in force until the next command: the operator's call wins
    over a file. Every starting worker does the same; the controller plans once per budget.
    """
    if state.epoch == 0:  # nothing planned yet: the first plan takes the config's budget
        return None, None
    budget = dict(budget)
    in_force = state.requested_budget or state.budget
    if in_force == budget:
        return None, None
    if state.requested_budget and not state.budget_from_config:
        return None, (
            f"the config's budget {budget} is not the one in force, {in_force}, which was set "
            "with `mlink budget`; that one stays until the next `mlink budget`"
        )
    message = ControlMessage(
        kind="budget",
        epoch=state.epoch,
        issued_at=time.time(),
        budget=budget,
        extra={BUDGET_ORIGIN: "config"},
    )
    return message, None


def refusal_message(
    state: ControlState,
    requested: Mapping[str, float],
    why: str,
    config_budget: Mapping[str, float],
) -> ControlMessage:
    """The budget in force again, carrying the requested one no plan meets and why. Without it
    the refused request stayed the requested budget: every later re-plan (new links, a pin or
    a rollback) planned for it and was refused too, a restarted worker kept it over the
    config's, and only the worker log said so. The restored budget is marked as the config's
    when it is the config's, so an edited config still replaces it on restart."""
    origin = {BUDGET_ORIGIN: "config"} if dict(state.budget) == dict(config_budget) else {}
    return ControlMessage(
        kind="budget",
        epoch=state.epoch,
        issued_at=time.time(),
        budget=dict(state.budget),
        extra={**origin, REFUSED_KEY: {"budget": dict(requested), "reason": why}},
    )


def all_models_message(
    models: Sequence[str],
    epoch: int,
    budget: dict[str, float],
    version: int,
    probe_every: int,
    why: str,
) -> ControlMessage:
    """No plan fits while warming up: run every model (said so on the control topic), so
    workers stop waiting for links that no budget-abiding plan can use."""
    return every_model_plan(models, epoch, budget, version, probe_every, {"infeasible": why})
