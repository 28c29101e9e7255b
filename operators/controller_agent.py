"""The controller agent: the one worker that decides the active set.

It is a group-managed agent on the control topic (one partition), so exactly one worker runs it;
it decides from the replayed state (:mod:`.control_operators`: the budget, the latest link
version, the epoch), never from variables of its own, so a controller that fails over decides
as the old one would. It plans on a new link version, a new budget, and a live agreement report
that shows a model below its accuracy target; a link version that cannot be loaded yet is tried
again with backoff, and one the store has lost, or one trained for other models than the
config's, is learned again (:mod:`.relearn`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import faust

from mlink.linkstore.bundle import BAD_RETRY_S
from mlink.linkstore.store import StoreError
from mlink.operators.budget_messages import (
    all_models_message,
    config_budget_message,
    refusal_message,
)
from mlink.operators.control_operators import ControlLog
from mlink.operators.controller import decide, guard_decision
from mlink.operators.controller_rules import relearn_holds, replan_for
from mlink.operators.plan_watch import PlanWatch
from mlink.operators.relearn import (
    LINK_SHA256,
    other_models_reason,
    relearn_message,
)
from mlink.operators.runtime import MLink
from mlink.operators.stream_decision import carried_corrections
from mlink.operators.wiring import Outbox, count_crashes, dead_letters, raw_topic, verified_value
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.records import ControlMessage, DecodeError

__all__ = ["attach_controller", "retry_with_backoff"]

log = logging.getLogger("mlink.control")
#: A link version that failed to load is planned from again after this long (the loader
#: remembers a failure for BAD_RETRY_S), then after twice as long, up to RETRY_LINKS_MAX_S.
RETRY_LINKS_S = BAD_RETRY_S + 1.0
RETRY_LINKS_MAX_S = 300.0
#: How long an event waits for the replay to hear the plan this controller sent last.
OWN_PLAN_WAIT_S = 10.0


async def retry_with_backoff(
    attempt: Callable[[], Awaitable[bool]],
    wanted: Callable[[], bool],
    first_s: float,
    most_s: float,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> bool:
    """Wait ``first_s``, then ``attempt()`` until it returns True, the wait doubling up to
    ``most_s``, for as long as ``wanted()`` (asked before each attempt). True once an attempt
    succeeded, False when it was no longer wanted."""
    delay = first_s
    while True:
        await sleep(delay)
        if not wanted():
            return False
        if await attempt():
            return True
        delay = min(delay * 2, most_s)


def attach_controller(app: faust.App, mlink: MLink) -> Any:
    """Attach the controller agent: on a new link version or budget, choose the active set."""
    names, settings = mlink.names, mlink.settings
    control_t = raw_topic(app, names.control)
    control_out = Outbox(app, mlink, names.control)
    dead = dead_letters(app, mlink)
    issued = 0

    lock = asyncio.Lock()  # one decision at a time: an event's, or a retry's
    retrying: dict[int, asyncio.Task[None]] = {}  # link version -> its retry

    def next_epoch() -> int:
        """Past the applied plan, past this controller's last, and past a plan this worker
        refused for its config's models (:attr:`ControlLog.epoch_heard`)."""
        heard = getattr(mlink, "control_log", None)
        return max(issued + 1, mlink.state.next_epoch(), (heard.epoch_heard if heard else 0) + 1)

    async def plan(
        reason: str | None,
        corrections: dict[str, float] | None,
        missed: Collection[str] = (),
        note: str | None = None,
    ) -> bool:
        """Decide and publish an active set from the replayed state; False when the link
        version could not be loaded (a shared store that is not visible yet, a read error).
        ``reason`` and ``missed`` come from the guard: the models live probes put below target."""
        nonlocal issued
        loop = asyncio.get_running_loop()
        async with lock:
            state = mlink.state
            version = state.wanted_links
            if version is None:
                log.info("budget noted; waiting for the first links")
                return True
            if (lost := relearn_holds(state)) is not None:
                # its files are gone or damaged, though this process may hold a copy
                log.info("links are being learned again; not planning from lost v%d", lost)
                return True
            budget = state.requested_budget or dict(settings.budget)
            if reason is not None and state.budget:  # the guard re-plans the budget in force,
                budget = dict(state.budget)  # not a request that was refused
            epoch = next_epoch()
            log.info("planning epoch %d from link version %d", epoch, version)
            try:
                links = await loop.run_in_executor(
                    mlink.executor("controller"), mlink.links, version
                )
                if links is None and version in mlink.other_models:
                    why = other_models_reason(version, mlink.other_models[version])
                    await relearn(version, why, logging.WARNING)  # a model change, not a loss
                    return True
                if links is None:
                    raise StoreError(f"link version {version} cannot be loaded")
                decide_for = functools.partial(
                    decide,
                    mlink.model_names,
                    mlink.declared_costs(),
                    links,
                    epoch=epoch,
                    selector=settings.links.selector,
                    probe_every=settings.links.probe_every,
                    stream=settings.links.stream,
                    probe_stride=settings.links.probe_stride,
                    corrections=corrections,
                )
                decision, reason = await loop.run_in_executor(
                    mlink.executor("controller"),
                    guard_decision,
                    decide_for,
                    budget,
                    reason,
                    missed,
                    state.plan_extra,
                )
                named = {LINK_SHA256: links.sha256} if links.sha256 else {}
                if reason is not None or note is not None:  # the guard's, or why else
                    named["replan_reason"] = reason if reason is not None else note
                decision = dataclasses.replace(decision, extra={**decision.extra, **named})
            except StoreError as exc:
                mlink.metrics["controller_refusals"] += 1
                log.error("controller keeps the current plan: %s", exc)
                return False
            except ValueError as exc:  # InfeasibleBudget, or targets it cannot plan for
                mlink.metrics["controller_refusals"] += 1
                if not state.warming_up:  # a plan in force goes on; in warm-up none would come
                    log.error("controller keeps the current plan (budget %s): %s", budget, exc)
                    if reason is None and budget == state.requested_budget != state.budget:
                        # the request goes, and says why: else every later re-plan plans for it
                        refusal = refusal_message(state, budget, str(exc), settings.budget)
                        await control_out.send(b"budget", encode_record(refusal))
                    return True
                log.error("budget infeasible, every model keeps running: %s", exc)
                decision = all_models_message(
                    mlink.model_names, epoch, budget, version, settings.links.probe_every, str(exc)
                )
            issued = epoch
            await control_out.send(b"active_set", encode_record(decision))
            return True

    async def retry_links(version: int) -> None:
        """Plan again from ``version`` until it loads, while it is still the newest and no
        plan uses it: no other event may come to ask (with ``retrain_every`` 0 no further
        version is trained), and a pipeline in warm-up would wait for good."""

        def wanted() -> bool:
            state = mlink.state
            return state.wanted_links == version and state.link_version != version

        async def attempt() -> bool:
            log.info("trying link version %d again", version)
            return await plan(None, carried_corrections(mlink.state.plan_extra))

        try:
            await retry_with_backoff(attempt, wanted, RETRY_LINKS_S, RETRY_LINKS_MAX_S)
        except Exception:  # a task's error would go unseen: say it, and leave it to events
            log.exception("retrying link version %d failed", version)
        finally:
            retrying.pop(version, None)

    async def relearn(version: int, why: str, level: int = logging.ERROR) -> None:
        """Publish the plan that runs every model until links above ``version`` (and above
        every version the log named) are trained; the caller holds ``lock``. ``level``: a
        lost store is an error, an edited config's model change a warning."""
        nonlocal issued
        state = mlink.state
        lost = max(version, state.latest_links or 0)
        why = f"{why}: every model runs until links above v{lost} are trained"
        epoch = next_epoch()
        budget = state.requested_budget or dict(settings.budget)
        message = relearn_message(
            mlink.model_names, epoch, budget, lost, settings.links.probe_every, why
        )
        log.log(level, "learning the links again: %s", why)
        mlink.metrics["relearns"] += 1
        mlink.prom.relearns.inc()
        issued = epoch
        await control_out.send(b"active_set", encode_record(message))

    watch = PlanWatch(app, mlink, lock, plan, relearn, control_out)

    async def restate_config_budget() -> None:
        """An edited config's budget takes effect on restart (:func:`config_budget_message`).
        Nothing here may fail the agent: it runs before the event loop, outside every event's
        guard, and an agent that raises there is restarted by faust every few seconds for
        good, with the pipeline stuck in its warm-up."""
        try:
            message, why = config_budget_message(mlink.state, settings.budget)
            if why is not None:
                log.warning(why)
            if message is None:
                return
            log.info("the config's budget %s is not the one in force: restating it", message.budget)
            await control_out.send(b"budget", encode_record(message))
        except Exception:  # the worker still serves; `mlink budget` sets it by hand
            log.exception("could not restate the config's budget %s", settings.budget)

    async def own_plans_replayed(control_log: ControlLog) -> None:
        """Until this worker's replay has heard the last plan this controller sent (at most
        :data:`OWN_PLAN_WAIT_S`). A rebalance during a plan delivers its event again from
        the last commit; decided on the state from before that plan, it planned the same
        links twice (stop 52: epochs 1 and 2 from one version, 4 s of planning each)."""

        def heard() -> bool:
            return max(mlink.state.epoch, control_log.epoch_heard) >= issued

        if not await control_log.wait_until(heard, OWN_PLAN_WAIT_S):
            log.warning("the replay has not heard this controller's epoch %d", issued)

    async def decide_on(event: Any, control_log: ControlLog) -> None:
        """Plan if the control message of ``event`` calls for a plan (:func:`replan_for`)."""
        rejected = None
        try:
            message = decode_record(
                verified_value(mlink, event), ControlMessage, limits=mlink.limits
            )
        except DecodeError as exc:
            rejected = str(exc)
        if not await control_log.wait_past(event.message.offset):
            log.warning("control replay is behind offset %s", event.message.offset)
        rejected = rejected or control_log.rejected.get(event.message.offset)
        if rejected is not None:  # dead-lettered once here; skipped by every replay
            await dead.send(event, "controller", f"rejected control message: {rejected}")
            return
        await own_plans_replayed(control_log)
        replan = replan_for(message, mlink, issued)
        if replan is None:
            return
        if replan.reason is not None:  # a model below its target: run it more
            log.warning("re-planning: %s", replan.reason)
        version = mlink.state.wanted_links
        planned = await plan(replan.reason, replan.corrections, replan.missed)
        if not planned and version is not None and version not in retrying:
            retrying[version] = asyncio.ensure_future(retry_links(version))

    async def controller(stream: faust.StreamT) -> None:
        await mlink.event("control").wait()
        await restate_config_budget()
        control_log: ControlLog = mlink.control_log  # type: ignore[attr-defined]
        watcher = asyncio.ensure_future(watch.run())
        # Manual acks: faust acks an event when its iteration ends, also when a stop cancels
        # the agent halfway through planning, so the next controller started after a link
        # version no plan used, and the pipeline kept its warm-up until the next version (a
        # rolling restart under a backlog, stop 52). Unacked, the event is replayed there.
        manual = stream.noack()
        try:
            async for event in manual.events():
                async with dead.guard(event, "controller"):
                    await decide_on(event, control_log)
                await manual.ack(event)  # decided, or dead-lettered by the guard: not replayed
        finally:
            watcher.cancel()
            for task in list(retrying.values()):
                task.cancel()

    controller.__name__ = "controller"
    return app.agent(control_t, name=f"{settings.name}-controller")(
        count_crashes(mlink, "controller")(controller)
    )
