"""Rolling the signing key without losing what the control topic says.

Workers replay the control topic from its start and skip every record whose signature no key
they hold verifies (:mod:`mlink.topics.signing`). Once the old key is retired, a restarting
worker would skip the whole history signed with it: the plan in force, the link version and a
budget set with ``mlink budget``, and it would warm up again from nothing. So between deploying
``new,old`` and deploying ``new``, :func:`restate_control` (``mlink resign``) publishes the
state in force again, signed with the new key: the run-time budget, the newest link version, a
pinned one, and the plan in force as the next epoch (the same plan; workers switch to it as to
any plan).
"""

from __future__ import annotations

import time

from mlink.deploy.config import PipelineConfig
from mlink.deploy.link_pins import pin_message
from mlink.deploy.runner import publish_control, read_control
from mlink.operators.state import BUDGET_ORIGIN
from mlink.topics.records import ControlMessage
from mlink.topics.signing import Signer

__all__ = ["restate_control"]


def restate_control(
    bootstrap: str, config: PipelineConfig, from_unsigned: bool = False
) -> list[ControlMessage]:
    """Publish the control state in force again, signed with the first key of
    ``MLINK_SIGNING_KEY``; return what was published (nothing for a pipeline with no state).
    ``from_unsigned``: the log was written without signing, which is being turned on now: read
    it accepting every record (as the workers did until now), and sign what it restates."""
    if not Signer.from_env().enabled:
        raise ValueError(
            "MLINK_SIGNING_KEY is not set: there is no new key to sign with (restating is for "
            "rolling a key: deploy 'new,old', run this, then deploy 'new')"
        )
    unverified: list[int] = []
    reader = Signer() if from_unsigned else None
    state, replayed = read_control(bootstrap, config, unverified=unverified, signer=reader)
    if unverified and not replayed:
        raise ValueError(
            f"none of the control topic's records verifies with MLINK_SIGNING_KEY "
            f"({len(unverified)} do not): restating now would publish nothing, and workers on "
            "the new key would start over from a warm-up. List the key the log was signed with "
            "after the new one (MLINK_SIGNING_KEY=new,old) and run this again; if the log was "
            "written without signing, run `mlink resign --from-unsigned` with the new key"
        )
    now = time.time()
    messages = []
    if state.requested_budget:
        origin = {BUDGET_ORIGIN: "config"} if state.budget_from_config else {}
        messages.append(
            ControlMessage(
                kind="budget",
                epoch=state.epoch,
                issued_at=now,
                budget=dict(state.requested_budget),
                extra=origin,
            )
        )
    if state.latest_links is not None:
        messages.append(
            ControlMessage(
                kind="link_version",
                epoch=state.epoch,
                issued_at=now,
                link_version=state.latest_links,
            )
        )
    if state.epoch > 0:
        messages.append(
            ControlMessage(
                kind="active_set",
                epoch=state.epoch + 1,
                issued_at=now,
                active=state.active,
                budget=dict(state.budget),
                link_version=state.link_version,
                probe_every=state.probe_every,
                extra=dict(state.plan_extra),
            )
        )
    if state.pinned_links is not None:  # after the plan: a relearn plan ends earlier pins
        messages.append(pin_message(state.pinned_links, True))
    if messages:
        publish_control(bootstrap, config, *messages)
    return messages
