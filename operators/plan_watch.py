"""The controller worker's periodic looks at the plan in force, for what no control message says.

A store that lost or damaged the version in force, a pin whose version went before any plan
used it, and a restart on an edited config (other models, other declared costs) all leave the
control log as it was, so nothing would make the controller act. Its worker therefore looks
:data:`FIRST_LOOK_S` after it starts and every :data:`LOOK_S` after (sooner with a short
``relearn_after_s``), and only while it holds the control partition: faust starts the agent's
coroutine on every worker, and each would otherwise act on its own view of the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from mlink.linkstore.store import StoreError
from mlink.operators.controller_rules import declared_cost_change, relearn_holds
from mlink.operators.relearn import (
    LINK_SHA256,
    LostLinks,
    lost_pin,
    unpin_lost_message,
)
from mlink.operators.runtime import MLink
from mlink.operators.stream_decision import carried_corrections
from mlink.topics.codec import encode_record

__all__ = ["FIRST_LOOK_S", "LOOK_S", "PlanWatch"]

log = logging.getLogger("mlink.control")
FIRST_LOOK_S = 3.0
LOOK_S = 15.0


def _controls(app: faust.App, control: str) -> bool:
    """Whether this worker holds the control topic's partition, so runs the controller. True
    when the assignment cannot be read (the watch then runs, as it did before this check)."""
    try:
        return any(tp.topic == control for tp in app.consumer.assignment())
    except Exception:
        return True


class PlanWatch:
    """The looks, acting through the controller's own ``plan`` and ``relearn`` (both take
    ``lock``'s turn like any event's decision)."""

    def __init__(
        self,
        app: faust.App,
        mlink: MLink,
        lock: asyncio.Lock,
        plan: Callable[..., Awaitable[bool]],
        relearn: Callable[[int, str], Awaitable[None]],
        control_out: Any,
    ) -> None:
        self.app, self.mlink, self.lock = app, mlink, lock
        self.plan, self.relearn, self.control_out = plan, relearn, control_out
        self._costs_tried: tuple[int, str] | None = None  # a re-plan that failed is not retried

    async def run(self) -> None:
        mlink = self.mlink
        after_s = mlink.settings.links.relearn_after_s  # 0: the store is not watched
        every_s = min(LOOK_S, after_s / 3) if after_s else LOOK_S

        def watchers() -> tuple[LostLinks, LostLinks] | None:
            return (LostLinks(after_s), LostLinks(after_s)) if after_s else None

        watching = watchers()
        for look in itertools.count():
            await asyncio.sleep(FIRST_LOOK_S if look == 0 else every_s)
            if not _controls(self.app, mlink.names.control):
                watching = watchers()
                continue
            try:
                await self.relearn_if_other_models()
                await self.replan_for_declared_costs()
            except Exception:  # the next look may work
                log.exception("checking the plan in force against the config failed")
            if watching is None:
                continue
            watch, pins = watching
            try:  # reading a whole version is dearer (an object store's GET): 1 look in 4
                await self.relearn_if_lost(watch, verify=look % 4 == 0 or watch.counting)
            except Exception:  # the next look may work; frames never wait for this one
                log.exception("checking the link store for the version in force failed")
            try:
                await self.end_lost_pin(pins)
            except Exception:
                log.exception("checking the link store for the pinned version failed")

    async def relearn_if_other_models(self) -> None:
        """Learn the links again when the version to plan from was trained for other models
        than this config's (:func:`~mlink.operators.relearn.model_set_change`)."""
        mlink = self.mlink
        version = mlink.state.wanted_links
        if version is None or relearn_holds(mlink.state) is not None:
            return
        loaded = await asyncio.get_running_loop().run_in_executor(
            mlink.executor("controller"), mlink.links, version
        )
        if loaded is not None or version not in mlink.other_models:
            return  # usable, or unreadable for another reason (the store watch's, the retry's)
        # the controller's own plan, which relearns for such a version (and plans from a newer
        # one that came in the meantime): the decision is made in one place
        await self.plan(None, carried_corrections(mlink.state.plan_extra))

    async def replan_for_declared_costs(self) -> None:
        """Plan again when the config declares other costs than the plan was made for."""
        state = self.mlink.state
        if state.link_version is None or relearn_holds(state) is not None:
            return
        why = declared_cost_change(state.plan_extra, self.mlink.declared_costs())
        if why is None or self._costs_tried == (state.epoch, why):
            return
        self._costs_tried = (state.epoch, why)
        log.warning("re-planning: %s", why)
        await self.plan(None, carried_corrections(state.plan_extra), note=why)

    async def relearn_if_lost(self, watch: LostLinks, verify: bool) -> None:
        """Ask the store whether it still holds the link version in force (``verify``: whole,
        every file read and hashed); once it has been gone or damaged for
        ``relearn_after_s``, run every model until new links are trained
        (:mod:`mlink.operators.relearn`)."""
        mlink = self.mlink
        version = mlink.state.link_version
        sha256 = mlink.state.plan_extra.get(LINK_SHA256)
        held: bool | None = None
        if version is not None:
            store = mlink.store
            look = store.intact if verify else store.holds
            try:  # the weights the plan was made from, not only a version of that number
                held = await asyncio.get_running_loop().run_in_executor(
                    mlink.executor("controller"),
                    look,
                    version,
                    sha256 if isinstance(sha256, str) else None,
                )
            except StoreError as exc:  # no evidence either way: keep the plan, ask again
                log.warning("cannot ask the link store about version %d: %s", version, exc)
            if held is False:
                log.warning("link version %d is missing or damaged in %s", version, store.root)
        now = time.monotonic()
        if not watch.lost(version, held, now):
            return
        async with self.lock:
            state = mlink.state
            if state.link_version != version or version is None:
                return  # a plan was made in the meantime
            await self.relearn(
                version,
                f"link version {version} has been missing or damaged in the link store "
                f"{mlink.store.root} for {watch.missing_for(now):.0f} s (lost, replaced or "
                f"corrupt)",
            )

    async def end_lost_pin(self, watch: LostLinks) -> None:
        """End a pin no plan uses whose version the store has not held for
        ``relearn_after_s`` (:func:`~mlink.operators.relearn.lost_pin`): plan from the newest
        again, and say why on the control topic (``mlink status``)."""
        mlink = self.mlink
        version = lost_pin(mlink.state.pinned_links, mlink.state.link_version)
        held: bool | None = None
        if version is not None:
            try:
                held = await asyncio.get_running_loop().run_in_executor(
                    mlink.executor("controller"), mlink.store.holds, version
                )
            except StoreError as exc:  # no evidence either way
                log.warning("cannot ask the link store about pinned version %d: %s", version, exc)
        now = time.monotonic()
        if not watch.lost(version, held, now):
            return
        async with self.lock:
            state = mlink.state
            if version != lost_pin(state.pinned_links, state.link_version):
                return  # unpinned, pinned again or planned from in the meantime
            why = (
                f"the link store {mlink.store.root} has not held pinned version {version} for "
                f"{watch.missing_for(now):.0f} s (deleted before the pin was heard of, or "
                f"lost): planning from the newest version again; pin another with mlink links"
            )
            log.error("ending the pin: %s", why)
            mlink.metrics["pins_ended"] += 1
            message = unpin_lost_message(version, state.epoch, why)
            await self.control_out.send(b"link_version", encode_record(message))
