"""Repair a consumer group that never settles, keeping where the pipeline had got to.

On the embedded Tansu broker a group can keep a member that left as its leader
(docs/broker.md, "A group that never settles"); only deleting the group ends it. A bare delete
also drops the group's committed offsets, so its workers start again from the earliest frame
and answer everything twice (642 duplicates in stop 46's audit). ``mlink repair-group`` reads
the committed offsets, deletes the group and commits the same offsets again.

It wants the workers stopped first. A live member can rejoin within a second of the delete
(a plain aiokafka member on Tansu, stop 47), and from then on the broker refuses a commit
from outside the group (``UNKNOWN_MEMBER_ID``), so the offsets may not be restored before the
workers read them (with two real workers mid-round the restore won 2 times of 2: a race, not
a rule). A stuck group's workers hold no partitions, so stopping them loses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlink.deploy.config import PipelineConfig
from mlink.deploy.group_members import SETTLED
from mlink.deploy.kafka_admin import admin_client
from mlink.deploy.security import aiokafka_kwargs, kafka_python_kwargs
from mlink.operators.group_check import describe_group
from mlink.topics.bootstrap import bootstrap_servers

__all__ = ["GroupRepair", "RepairRefused", "repair_group"]


class RepairRefused(RuntimeError):
    """Why the group was left as it was; nothing was changed."""


@dataclass(frozen=True)
class GroupRepair:
    """What a repair did: the group's state and members before, and the committed offsets it
    restored (``{(topic, partition): offset}``)."""

    group: str
    state: str
    members: int
    offsets: dict[tuple[str, int], int]


def repair_group(
    bootstrap: str,
    config: PipelineConfig,
    *,
    force: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> GroupRepair:
    """Delete the pipeline's consumer group and restore its committed offsets. A group with
    members is refused unless ``force`` (see the module's docstring). Raises
    :class:`RepairRefused` when nothing was changed, and ``RuntimeError`` naming the offsets
    when the delete went through but they could not be restored."""
    group = config.name
    kwargs = {"bootstrap_servers": bootstrap_servers(bootstrap), **aiokafka_kwargs(config.security)}
    try:
        answer = asyncio.run(describe_group(kwargs, group))
    except Exception as exc:
        raise RepairRefused(
            f"the broker at {bootstrap} did not describe group {group!r} ({exc}); check "
            "--broker and that the broker is up"
        ) from exc
    if answer is None or (answer.state == "Dead" and not answer.members):  # Kafka: none such
        raise RepairRefused(f"the broker knows no consumer group {group!r}: nothing to repair")
    if answer.error:
        raise RepairRefused(f"the broker answered error code {answer.error} for group {group!r}")
    if answer.members and not force:
        raise RepairRefused(_why_not_with_members(group, answer.state, len(answer.members)))
    client = kafka_python_kwargs(config.security)
    committed: dict[Any, Any] | None = None
    try:
        with admin_client(bootstrap, **client) as admin:
            committed = _committed(admin, group)
            say(
                f"group {group!r}: {answer.state}, {len(answer.members)} member(s), "
                f"{len(committed)} committed offsets read"
            )
            _delete(admin, group)
    except RepairRefused:
        raise
    except Exception as exc:
        if committed is None:  # nothing read, nothing deleted
            raise RepairRefused(f"could not read group {group!r}'s offsets: {exc}") from exc
        raise RuntimeError(_lost(group, committed, f"the delete raised {exc}")) from exc
    say(f"group {group!r} deleted")
    if committed:
        _restore(bootstrap, client, group, committed)
    restored = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
    then = "the workers in it rejoin" if answer.members else "start the workers"
    say(f"restored {len(restored)} committed offsets: {then}")
    if not restored and not answer.members:
        say(
            f"note: group {group!r} had no members and no committed offsets, as the embedded "
            "broker describes a group it never saw: check that this is the pipeline's config "
            "(its `name` is the group)"
        )
    return GroupRepair(group, answer.state, len(answer.members), restored)


def _committed(admin: Any, group: str) -> dict[Any, Any]:
    answer = admin.list_group_offsets(group)  # kafka-python 3: {group: {tp: meta}}
    return {tp: meta for tp, meta in answer.get(group, {}).items() if meta.offset >= 0}


def _delete(admin: Any, group: str) -> None:
    error = dict(admin.delete_groups([group])).get(group, "OK")  # {group: 'OK' | error name}
    if error == "NonEmptyGroupError":
        raise RepairRefused(
            f"the broker refused to delete group {group!r} while it has members (a Kafka "
            "broker does; the embedded one does not): stop the pipeline's workers, run "
            "`mlink repair-group` again, then start them"
        )
    if error not in ("OK", "GroupIdNotFoundError"):  # not found: already gone, nothing lost
        raise RepairRefused(f"the broker did not delete group {group!r}: {error}")


def _why_not_with_members(group: str, state: str, members: int) -> str:
    if state == SETTLED:
        return (
            f"consumer group {group!r} is {SETTLED} with {members} member(s): its workers have "
            "their partitions and are answering, so there is nothing to repair"
        )
    return (
        f"consumer group {group!r} is {state} with {members} member(s): stop the pipeline's "
        "workers first (a stuck group's workers hold no partitions, so nothing is lost), run "
        "`mlink repair-group` again, then start them. A live member rejoins within a second of "
        "the delete, and then the broker refuses to restore the offsets. --force deletes with "
        "members in; if the restore then fails, they start again from each topic's reset point"
    )


RESTORE_TRIES = 5  # the embedded broker drops the connection of the request after a delete


def _restore(bootstrap: str, client: dict[str, Any], group: str, committed: dict) -> None:
    why = ""
    for attempt in range(RESTORE_TRIES):
        try:
            with admin_client(bootstrap, **client) as admin:
                errors = admin.alter_group_offsets(group, committed)  # {tp: error class}
                now = _committed(admin, group)
        except Exception as exc:  # a dropped connection: a new client, once more
            why = f"committing them again raised {exc}"
            time.sleep(0.2 * (attempt + 1))
            continue
        refused = sorted({e.__name__ for e in errors.values() if getattr(e, "errno", 0)})
        wrong = [t for t, meta in committed.items() if t not in now or now[t].offset != meta.offset]
        if not refused and not wrong:
            return
        why = f"the broker answered {', '.join(refused)}" if refused else ""
        why = why or f"{len(wrong)} did not read back as written"
        if refused:  # a member is in the group again: retrying cannot help
            break
    raise RuntimeError(_lost(group, committed, why))


def _lost(group: str, committed: dict[Any, Any], why: str) -> str:
    shown = ", ".join(
        f"{tp.topic}[{tp.partition}]={meta.offset}" for tp, meta in sorted(committed.items())
    )
    return (
        f"group {group!r} may have been deleted without its committed offsets ({why}): "
        "if so, its workers start again from each topic's reset point and answer frames twice. "
        f"The offsets were: {shown}"
    )
