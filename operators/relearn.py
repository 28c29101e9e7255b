"""Learning the links again when the store that held them lost or damaged them, or when the
config's models changed since they were trained (:func:`model_set_change`).

A link store can vanish under a running pipeline (a container restarted without its volume, a
bucket emptied by a lifecycle rule, a config pointed at a new store), or a version's files can
be damaged on disk, or a replacement store can hold another pipeline's weights under the same
number (plans name the digest of theirs, :data:`LINK_SHA256`). The control log still names
the old versions. Workers that loaded them keep them in memory; every other worker cannot load
them and leaves the synthesized models' outputs missing, and with ``retrain_every`` 0 nothing
would ever train again. So the controller asks the store itself whether it still holds the
version in force (:meth:`~mlink.linkstore.store_reads.VersionReads.holds`, not the loader's
cache), and one look in four whether it holds it whole
(:meth:`~mlink.linkstore.store_reads.VersionReads.intact`: a file damaged on disk fails every
worker that loads it next); once it has been gone or damaged for
``LinkSettings.relearn_after_s``, the controller publishes a
plan that runs every model with no links (a warm-up again, said why on the control topic and in
``mlink status``), and the trainer trains from its buffer, or from the new warm-up frames, a
version numbered above every one the log has named. The controller plans from it as from any
new version. docs/link-store.md, "A lost, replaced or damaged store".
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlink.topics.control import PIN_KEY
from mlink.topics.records import ControlMessage
from mlink.topics.specs import OutputSpec

__all__ = [
    "CLIENT_ID_PREFIX",
    "LINK_SHA256",
    "MODEL_SET_CHARS",
    "RELEARN_KEY",
    "LostLinks",
    "every_model_plan",
    "lost_pin",
    "model_set_change",
    "model_set_id",
    "models_change",
    "other_models_reason",
    "relearn_message",
    "relearning",
    "unpin_lost_message",
]

LINK_SHA256 = "link_sha256"
"""The key of a plan's ``extra``: the digest of the weights of the link version it was made
from, so a store that holds other weights under that number counts as having lost it."""

RELEARN_KEY = "relearn"
"""The key of a warm-up-again plan's ``extra``: the newest version the log named when the
store lost the links; the trainer trains above it, once."""


class LostLinks:
    """Since when the store has not held the link version in force (whole): a version missing
    for a moment may be a shared store that is slow to show it, or a store moved by hand."""

    def __init__(self, after_s: float) -> None:
        if after_s <= 0:
            raise ValueError(f"after_s must be > 0, got {after_s!r}")
        self.after_s = after_s
        self._missing: tuple[int, float] | None = None  # (version, first seen missing)

    def lost(self, version: int | None, held: bool | None, now: float) -> bool:
        """Whether ``version`` (in force) has been missing for ``after_s`` by ``now``.
        ``held``: what the store said (None: it could not be asked, which is no evidence
        either way and keeps the count as it is)."""
        if version is None or held:
            self._missing = None
            return False
        if held is None:
            return False
        if self._missing is None or self._missing[0] != version:
            self._missing = (version, now)
        return now - self._missing[1] >= self.after_s

    @property
    def counting(self) -> bool:
        """Whether the version in force was seen missing and has not been seen since: look
        closely every time until it is (a damaged version is present, so only a full read
        tells it from a good one)."""
        return self._missing is not None

    def missing_for(self, now: float) -> float:
        """Seconds the version in force has been seen missing (0: it has not)."""
        return 0.0 if self._missing is None else now - self._missing[1]


def relearning(
    plan_extra: dict[str, Any], link_version: int | None, latest: int | None
) -> int | None:
    """The version the trainer must train above while the pipeline learns its links again,
    or None. Over once a newer version is announced (``latest`` moves past it) or a plan with
    links is in force. ``lost`` may lie above ``latest`` (a pinned version the trainer never
    announced): the relearn is on until a version above it is announced."""
    lost = plan_extra.get(RELEARN_KEY)
    if link_version is not None or type(lost) is not int or (latest or 0) > lost:
        return None
    return lost


def model_set_change(
    trained: Mapping[str, OutputSpec], configured: Mapping[str, OutputSpec]
) -> str | None:
    """How the models a link version was trained for differ from the config's, or None.

    A config that gains, loses or re-specs a model after its links were trained cannot plan
    from them: a plan from the old links has no link into an added model (left ``missing`` on
    every frame it does not run, and the controller's oracle fails on it), and one that names a
    removed model is refused by every worker, which then stays in warm-up for good. So the
    controller learns the links again (docs/link-store.md, "Changing the models").

    Said from the config's side (:func:`models_change`): the same words serve a config edited
    since the links were trained and a worker left on the old config of a rolling restart.
    """
    changed = sorted(m for m in set(trained) & set(configured) if trained[m] != configured[m])
    parts = models_change(trained, configured, "the links cover", "the links do not cover")
    if changed:
        said = _names(changed)
        parts.append(f"this config gives {said} another output than the links were trained for")
    return "; ".join(parts) or None


def models_change(
    theirs: Iterable[str], ours: Iterable[str], covers: str, misses: str, most: int = 20
) -> list[str]:
    """Which models this config (``ours``) and a link version or plan (``theirs``) do not
    share, said from this config's side: ``misses`` ("the links do not cover") the config's
    extra models, ``covers`` ("the links cover") theirs. "added ['value_gbr']", seen from a
    worker left on the old config, read as the rollout adding a model it had removed (a
    helper's rollout audit, stop 45). At most ``most`` names each (a plan's come from a
    record)."""
    ours_only = sorted(set(ours) - set(theirs))
    theirs_only = sorted(str(m) for m in set(theirs) - set(ours))
    parts = []
    if ours_only:
        parts.append(f"this config has {_names(ours_only, most)}, which {misses}")
    if theirs_only:
        parts.append(f"{covers} {_names(theirs_only, most)}, which this config does not have")
    return parts


def _names(names: Sequence[str], most: int = 20) -> str:
    """Model names as a reader reads them: plain ones bare, any other quoted (a name from a
    record may hold anything), "and N more" past ``most``."""
    said = [n if _PLAIN_NAME.fullmatch(n) else repr(n) for n in names[:most]]
    if len(names) > most:
        said.append(f"{len(names) - most} more")
    return said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]


_PLAIN_NAME = re.compile(r"[\w.\-]+", re.ASCII)


CLIENT_ID_PREFIX = "mlink-models-"
"""A worker's Kafka client id is this prefix and its :func:`model_set_id`."""
MODEL_SET_CHARS = 8


def model_set_id(specs: Mapping[str, OutputSpec]) -> str:
    """A short digest of a config's models and their outputs: what :func:`model_set_change`
    compares. Workers put it in their Kafka client id, so ``mlink status`` can tell workers on
    another config in the group (a rolling restart under way, or one left behind)."""
    canonical = json.dumps(sorted((m, s.to_dict()) for m, s in specs.items()), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:MODEL_SET_CHARS]


def other_models_reason(version: int, change: str) -> str:
    """Why a relearn plan replaced a version trained for other models (``change``: how)."""
    return f"link version {version} was trained for other models than this config's ({change})"


def every_model_plan(
    models: Sequence[str],
    epoch: int,
    budget: dict[str, float],
    version: int | None,
    probe_every: int,
    extra: dict[str, Any],
) -> ControlMessage:
    """An active set of every model, with ``extra`` saying why (a relearn, an infeasible
    budget in warm-up)."""
    return ControlMessage(
        kind="active_set",
        epoch=epoch,
        issued_at=time.time(),
        active=tuple(sorted(models)),
        budget=budget,
        link_version=version,
        probe_every=probe_every,
        extra=extra,
    )


def relearn_message(
    models: Sequence[str],
    epoch: int,
    budget: dict[str, float],
    lost: int,
    probe_every: int,
    why: str,
) -> ControlMessage:
    """The warm-up-again plan: every model runs on every frame, no links, and why."""
    extra = {RELEARN_KEY: lost, "replan_reason": why}
    return every_model_plan(models, epoch, budget, None, probe_every, extra)


def lost_pin(pinned: int | None, in_force: int | None) -> int | None:
    """The pinned version to ask the store about, or None: a pin no plan uses yet. ``mlink
    links --pin`` checks the store and then sends the pin, and a trainer that prunes before
    it hears of the pin deletes the version in between; the controller would then try to load
    it for good, the newest links unused. A pin in force is the relearn's to watch."""
    return pinned if pinned is not None and pinned != in_force else None


def unpin_lost_message(version: int, epoch: int, why: str) -> ControlMessage:
    """The control message that ends a pin on a version the store no longer holds: the
    controller plans from the newest version again, and ``reason`` says why."""
    return ControlMessage(
        kind="link_version",
        epoch=epoch,
        issued_at=time.time(),
        link_version=version,
        extra={PIN_KEY: False, "reason": why},
    )
