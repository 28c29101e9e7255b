"""What every worker knows about the current plan, rebuilt from the control topic.

The control topic is the single source of truth: the controller publishes active sets with an
increasing epoch, the trainer announces link versions and live agreement, ``mlink budget``
publishes budget commands. Every worker replays it from the beginning into a
:class:`ControlState`, so a restarted worker plans exactly like the others, and the planner
stamps each frame from this state so that model operators and the link operator never have to
agree on anything themselves.

Because every worker replays the whole log after every restart, one message a worker cannot
fold in would take the pipeline down for good. So :meth:`ControlState.apply` never raises: it
checks each message against the rules of :mod:`mlink.topics.control` and this worker's models,
and returns an :class:`ApplyOutcome` saying whether the message was applied, ignored as stale
(a replay or a duplicate, which at-least-once delivery makes normal) or rejected (with the
reason, for the one consumer that dead-letters it). A rejected message changes nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mlink.linkstore.content_forecast import ContentTable
from mlink.linkstore.schedule import EXTRA_KEY, Schedule
from mlink.operators.relearn import RELEARN_KEY, models_change
from mlink.topics.control import (
    MAX_EPOCH,
    MAX_EPOCH_STEP,
    PIN_KEY,
    QUICK_KEY,
    agreement_problem,
    budget_problem,
    pin_problem,
)
from mlink.topics.records import ControlMessage, Plan

__all__ = ["BUDGET_ORIGIN", "REFUSED_KEY", "ApplyOutcome", "ApplyStatus", "ControlState"]

#: ``extra`` key of a ``budget`` message that says where it came from: ``"config"`` when a
#: starting worker restates its config's budget (operators.controller_agent).
BUDGET_ORIGIN = "origin"
REFUSED_KEY = "refused"
"""``extra`` key of a ``budget`` message the controller sends when no plan meets a requested
budget: ``{"budget": {...}, "reason": "..."}``; the message's own budget is the one in force
again, so later re-plans (new links, a pin) do not plan for the refused one and fail again."""

ApplyStatus = Literal["applied", "stale", "rejected"]


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What :meth:`ControlState.apply` did with a message.

    Truthy exactly when the plan changed (a new active set), as ``apply`` returned before it
    reported outcomes, so ``if state.apply(message): log(...)`` still reads right.
    """

    status: ApplyStatus
    reason: str = ""
    plan_changed: bool = False

    def __bool__(self) -> bool:
        return self.plan_changed

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


_STALE_EPOCH = "an active set no newer than the current epoch"


KEPT_SCHEDULES = 16


@dataclass(slots=True, init=False)
class ControlState:
    """Latest decisions seen on the control topic, and the plan they imply for a frame.

    ``requested_budget`` is the budget of the latest ``budget`` message in log order (empty
    until one arrives): the controller decides from it, so a budget set at run time survives a
    controller fail-over and a restart. ``budget`` is the budget the current active set was
    chosen for.
    """

    models: tuple[str, ...]
    epoch: int
    active: tuple[str, ...]
    link_version: int | None
    probe_every: int
    budget: dict[str, float]
    requested_budget: dict[str, float]
    budget_from_config: bool
    """Whether ``requested_budget`` restates a worker's config (:data:`BUDGET_ORIGIN`) rather
    than a run-time command (``mlink budget``): an edited config replaces the one, not the other."""
    budget_refused: dict[str, Any] | None
    """The last requested budget no plan met and why (:data:`REFUSED_KEY`), until the next
    budget request: ``mlink budget`` and ``mlink status`` say so."""
    latest_links: int | None
    latest_quick: bool
    """Whether the newest announced version is a cold pipeline's quick first links
    (``extra["quick"]``): a trainer that takes over after them still trains the full ones."""
    pinned_links: int | None
    """The version an operator pinned (``mlink links --pin``): planned from instead of the
    newest until unpinned, or until the store loses it and the links are learned again."""
    pin_ended: str | None
    """Why the controller ended the last pin (the store lost the version before any plan used
    it), until an operator pins again: ``mlink status`` says so."""
    live_agreement: dict[str, float]
    live_probes: int
    live_counts: dict[str, float]
    """Effective probes behind each model's live agreement (carried across plans that keep the
    model's option); models without an entry count ``live_probes``."""
    live_started: dict[str, float]
    """The correction factor each carried model's option started with."""
    schedules: OrderedDict[int, Schedule | None]
    """The schedules of the last :data:`KEPT_SCHEDULES` epochs: a frame planned under one is
    synthesized by it, however late its outputs arrive (the split layout)."""
    plan_extra: dict[str, Any]
    """What the controller said of the current active set (predictions, corrections...)."""
    content: ContentTable | None
    """The current plan's estimate per content signature (plans of the paper's links)."""

    def __init__(self, models: Sequence[str], probe_every: int = 0) -> None:
        self.models = tuple(sorted(models))
        self.epoch = 0
        self.active = ()
        self.link_version = None
        self.probe_every = probe_every
        self.budget = {}
        self.requested_budget = {}
        self.budget_from_config = False
        self.budget_refused = None
        self.latest_links = None
        self.latest_quick = False
        self.pinned_links = None
        self.pin_ended = None
        self.live_agreement = {}
        self.live_probes = 0
        self.live_counts, self.live_started = {}, {}
        self.schedules = OrderedDict()
        self.plan_extra = {}
        self.content = None

    @property
    def warming_up(self) -> bool:
        """No links yet: every model runs on every frame, and every frame trains the links."""
        return self.link_version is None or (not self.active and self.schedule is None)

    @property
    def wanted_links(self) -> int | None:
        """The link version the controller plans from: the pinned one, else the newest."""
        return self.latest_links if self.pinned_links is None else self.pinned_links

    def next_epoch(self) -> int:
        """The epoch the controller gives its next active set: one past the applied one.

        Derived from applied active sets only, so a forged epoch on another kind of message
        cannot push it out of range.
        """
        return self.epoch + 1

    def apply(self, message: Any) -> ApplyOutcome:
        """Fold one control message in; never raises, whatever ``message`` holds."""
        try:
            return self._apply(message)
        except Exception as exc:  # a rule this code did not foresee: skip, do not crash
            return ApplyOutcome("rejected", f"cannot apply ({type(exc).__name__}: {exc})")

    def _apply(self, message: Any) -> ApplyOutcome:
        if not isinstance(message, ControlMessage):
            return _rejected(f"expected a ControlMessage, got {type(message).__name__}")
        epoch = message.epoch
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
            return _rejected(f"epoch {epoch!r} is not an int in [0, 2**53]")
        problem = budget_problem(message.budget, self.models)
        if problem:
            return _rejected(f"budget: {problem}")
        if not isinstance(message.extra, dict):
            return _rejected(f"extra must be a dict, got {type(message.extra).__name__}")
        if message.kind == "budget":
            if not message.budget:
                return _rejected("a budget message needs at least one budget key")
            self.requested_budget = dict(message.budget)
            self.budget_from_config = message.extra.get(BUDGET_ORIGIN) == "config"
            self.budget_refused = _refusal(message.extra.get(REFUSED_KEY))
            return ApplyOutcome("applied")
        if message.kind == "agreement":
            return self._apply_agreement(message)
        if message.kind == "link_version":
            version = message.link_version
            if type(version) is not int or not 0 <= version <= MAX_EPOCH:
                return _rejected(f"link_version {version!r} is not an int in [0, 2**53]")
            problem = pin_problem(message.extra)
            if problem:
                return _rejected(problem)
            pin = message.extra.get(PIN_KEY)
            if pin is None:  # the trainer announces a version
                if version - (self.latest_links or 0) > MAX_EPOCH_STEP:  # as for epochs: a
                    return _rejected(  # forged jump would raise the newest for good
                        f"link_version {version} jumps more than {MAX_EPOCH_STEP:,} past the "
                        f"newest announced v{self.latest_links or 0}"
                    )
                if version >= (self.latest_links or 0):
                    self.latest_quick = message.extra.get(QUICK_KEY) is True
                self.latest_links = max(self.latest_links or 0, version)
            else:  # an operator pins one, or follows the newest again (or the controller,
                why = message.extra.get("reason")  # with a reason, when the store lost it)
                if pin and version < 1:
                    return _rejected(f"a pin needs a link version >= 1, got {version}")
                if not pin and isinstance(why, str) and version != self.pinned_links:
                    # the controller ended a pin an operator has replaced since
                    return ApplyOutcome("stale", f"v{version} is not the pinned version")
                self.pinned_links = version if pin else None
                self.pin_ended = why if not pin and isinstance(why, str) else None
            return ApplyOutcome("applied")
        if message.kind == "active_set":
            return self._apply_active_set(message)
        if message.kind == "worker_started":  # tells other pipelines on this prefix: no state
            return ApplyOutcome("applied")
        return _rejected(f"unknown kind {message.kind!r}")

    def _apply_agreement(self, message: ControlMessage) -> ApplyOutcome:
        problem = agreement_problem(message.extra, self.models)
        if problem:
            return _rejected(problem)
        if message.epoch != self.epoch:
            return ApplyOutcome("stale", f"agreement of epoch {message.epoch}, not {self.epoch}")
        scores = message.extra.get("live_agreement", {})
        self.live_agreement = {model: float(score) for model, score in scores.items()}
        self.live_probes = int(message.extra.get("probes", 0))
        counts = message.extra.get("live_counts", {})
        self.live_counts = {model: float(n) for model, n in counts.items()}
        started = message.extra.get("live_started", {})
        self.live_started = {model: float(f) for model, f in started.items()}
        return ApplyOutcome("applied")

    def _apply_active_set(self, message: ControlMessage) -> ApplyOutcome:
        schedule = None
        if EXTRA_KEY in message.extra:
            try:
                schedule = Schedule.from_extra(message.extra, self.models)
            except (ValueError, TypeError) as exc:
                why = f"epoch {message.epoch} schedule: {exc}"
                return _rejected(why + _planned_for(message.extra, self.models))
        content = None
        if "content" in message.extra:
            try:
                content = ContentTable.from_meta(message.extra["content"], self.models)
            except ValueError as exc:
                why = f"epoch {message.epoch} content table: {exc}"
                return _rejected(why + _planned_for(message.extra, self.models))
        if not message.active and schedule is None:
            return _rejected("an active set must name at least one model")
        unknown = sorted(set(message.active) - set(self.models))
        if unknown:
            return _rejected(
                f"epoch {message.epoch} activates unknown models {unknown}; this worker's "
                f"config has {list(self.models)}"
            )
        version = message.link_version
        if version is not None and (type(version) is not int or not 0 <= version <= MAX_EPOCH):
            return _rejected(f"link_version {version!r} is not an int in [0, 2**53]")
        probe_every = message.probe_every
        if type(probe_every) is not int or not 0 <= probe_every <= MAX_EPOCH:
            return _rejected(f"probe_every {probe_every!r} is not an int in [0, 2**53]")
        if message.epoch <= self.epoch:
            return ApplyOutcome("stale", f"{_STALE_EPOCH} {self.epoch}: epoch {message.epoch}")
        if message.epoch - self.epoch > MAX_EPOCH_STEP:
            return _rejected(
                f"epoch {message.epoch} jumps more than {MAX_EPOCH_STEP:,} past the current "
                f"epoch {self.epoch}"
            )
        # Everything that can still raise is built before the first field changes: apply()
        # reports an exception as a rejection, and a rejection must leave the state as it was.
        active, budget, extra = (
            tuple(sorted(message.active)),
            dict(message.budget),
            dict(message.extra),
        )
        self.epoch = message.epoch
        self.active = active
        self.link_version = version
        self.probe_every = probe_every
        self.budget = budget
        self.live_agreement, self.live_probes = {}, 0
        self.live_counts, self.live_started = {}, {}
        self.schedules[message.epoch] = schedule
        while len(self.schedules) > KEPT_SCHEDULES:
            self.schedules.popitem(last=False)
        self.plan_extra = extra
        self.content = content
        if RELEARN_KEY in extra:  # the store lost the links: a pin cannot hold, follow the new
            self.pinned_links = None
        return ApplyOutcome("applied", plan_changed=True)

    @property
    def schedule(self) -> Schedule | None:
        """The stream schedule of the current active set, if the controller published one."""
        return self.schedules.get(self.epoch)

    def schedule_of(self, epoch: int) -> Schedule | None:
        """The schedule frames of ``epoch`` were planned by; None if there was none, or if the
        epoch is too old to be held (its frames then get the paper's links)."""
        return self.schedules.get(epoch)

    def plan(self, seq: int, cascades: bool = True) -> Plan:
        """The plan for the frame with sequence number ``seq`` in its stream.

        Probe frames (every ``probe_every``-th, and all frames while warming up) run every
        model: they feed the trainer and measure live agreement of the synthesized outputs.
        Under a stream schedule the models that run depend on ``seq`` (each on its period);
        a cascade's model runs where its source fires, which the frame operator learns after
        running the plan (``cascades=False``, for a layout that plans before any model runs:
        they run on every frame).
        """
        if self.warming_up:
            return Plan(epoch=self.epoch, active=self.models, probe=True, link_version=None)
        if self.schedule is not None:
            probe = self.schedule.is_probe(seq)
            runs = self.schedule.runs(seq) | (frozenset() if cascades else self.schedule.cascaded)
            return Plan(
                epoch=self.epoch,
                active=self.models if probe else tuple(sorted(runs)),
                probe=probe,
                link_version=self.link_version,
            )
        probe = self.probe_every > 0 and seq % self.probe_every == 0
        return Plan(
            epoch=self.epoch,
            active=self.models if probe else self.active,
            probe=probe,
            link_version=self.link_version,
        )


def _rejected(reason: str) -> ApplyOutcome:
    return ApplyOutcome("rejected", reason)


def _planned_for(extra: Mapping[str, Any], models: Sequence[str]) -> str:
    """What a refusal adds when the plan's cost table names other models than ``models``, said
    from this config's side (:func:`~mlink.operators.relearn.models_change`), else ``""``: a
    plan refused for a config edit named only the first check it failed ("content table counts
    6 run and 1 synthesized models; this pipeline has 6")."""
    planned = extra.get("model_ms")
    if not isinstance(planned, Mapping):
        return ""
    parts = models_change(planned, models, "the plan names", "the plan does not name")
    return f" (planned for other models than this config's: {'; '.join(parts)})" if parts else ""


def _refusal(value: Any) -> dict[str, Any] | None:
    """A budget message's refusal (:data:`REFUSED_KEY`) as status shows it, or None when it has
    none or a malformed one (a forged or future record must not break a reader)."""
    if not isinstance(value, dict):
        return None
    budget, reason = value.get("budget"), value.get("reason")
    if not isinstance(budget, dict) or not isinstance(reason, str):
        return None
    return {"budget": {str(k): v for k, v in budget.items()}, "reason": reason}
