"""How many workers a pipeline has right now: the members of its consumer group.

Every worker of a pipeline is one member of the consumer group named after the config's
``name`` (the faust app id), so the group's member count is the number of live workers as
the broker sees them: Kafka drops a dead one at its session timeout, while the embedded Tansu
broker still listed a worker killed with SIGKILL 70 s later (an SRE's audit; the workers'
heartbeats in their health files are the check there). aiokafka's admin client reads it:
on Tansu, kafka-python 3.0's ``describe_groups`` fails to parse the reply ("15 is not a valid
ACLOperation") and its ``list_groups`` returns no group, while aiokafka's describe answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from mlink.deploy.config import PipelineConfig
from mlink.deploy.security import aiokafka_kwargs
from mlink.operators.group_check import describe_group
from mlink.operators.relearn import CLIENT_ID_PREFIX, MODEL_SET_CHARS
from mlink.topics.bootstrap import bootstrap_servers

__all__ = ["SETTLED", "UNKNOWN", "group_members", "model_sets"]

log = logging.getLogger("mlink.status")
UNKNOWN = "unknown"  # the model set of a member whose client id names none
SETTLED = "Stable"  # the state of a group whose members have their partitions


def group_members(bootstrap: str, config: PipelineConfig) -> dict[str, Any] | None:
    """``{"group", "state", "workers", "members", "model_sets"}`` of the pipeline's consumer
    group (state as the broker names it: Stable, PreparingRebalance, Empty, Dead...;
    ``model_sets``: members per model set, see :func:`model_sets`), or None when the broker
    did not say (logged: the count is advisory, as the lag is)."""
    try:
        return asyncio.run(_describe(bootstrap, config))
    except Exception as exc:
        log.warning("live workers unavailable: %s", exc)
        return None


async def _describe(bootstrap: str, config: PipelineConfig) -> dict[str, Any]:
    kwargs = {"bootstrap_servers": bootstrap_servers(bootstrap), **aiokafka_kwargs(config.security)}
    answer = await describe_group(kwargs, config.name)
    if answer is None:
        return {
            "group": config.name,
            "state": "Dead",
            "workers": 0,
            "members": [],
            "model_sets": {},
        }
    if answer.error:
        raise RuntimeError(
            f"the broker answered error code {answer.error} for group {config.name!r}"
        )
    return {
        "group": config.name,
        "state": answer.state,
        "workers": len(answer.members),
        "members": sorted(member for member, _ in answer.members),
        # Kafka names a member after its client id; Tansu reports only that name
        "model_sets": model_sets(client or member for member, client in answer.members),
    }


def model_sets(client_ids: Iterable[str]) -> dict[str, int]:
    """How many members run each model set (:func:`~mlink.operators.relearn.model_set_id`,
    from the client id a worker gives Kafka, or the member id the broker made of it);
    ``"unknown"`` for one that names none (a worker of an older release, or an app that set
    its own ``broker_client_id``)."""
    counts: Counter[str] = Counter()
    for client_id in client_ids:
        named = client_id.startswith(CLIENT_ID_PREFIX)
        counts[client_id[len(CLIENT_ID_PREFIX) :][:MODEL_SET_CHARS] if named else UNKNOWN] += 1
    return dict(sorted(counts.items()))
