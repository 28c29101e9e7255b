"""What every worker knows about the current plan, rebuilt from the control topic.

The control topic is the single source of truth: the controller publishes active sets with an
increasing epoch, the trainer announces link versions, ``mlink budget`` publishes budget
commands. Every worker replays it from the beginning into a :class:`ControlState`, so a restarted
worker plans exactly like the others, and the planner stamps each frame from this state so that
model operators and the link operator never have to agree on anything themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mlink.topics.records import ControlMessage, Plan


@dataclass(slots=True)
class ControlState:
    """Latest decisions seen on the control topic, and the plan they imply for a frame."""

    models: tuple[str, ...]
    epoch: int = 0
    active: tuple[str, ...] = ()
    link_version: int | None = None
    probe_every: int = 0
    budget: dict[str, float] = field(default_factory=dict)
    requested_budget: dict[str, float] = field(default_factory=dict)
    latest_links: int | None = None
    live_agreement: dict[str, float] = field(default_factory=dict)
    live_probes: int = 0

    def __init__(self, models: Sequence[str], probe_every: int = 0) -> None:
        self.models = tuple(sorted(models))
        self.epoch = 0
        self.active = ()
        self.link_version = None
        self.probe_every = probe_every
        self.budget = {}
        self.requested_budget = {}
        self.latest_links = None
        self.live_agreement: dict[str, float] = {}
        self.live_probes = 0

    @property
    def warming_up(self) -> bool:
        """No links yet: every model runs on every frame, and every frame trains the links."""
        return self.link_version is None or not self.active

    def apply(self, message: ControlMessage) -> bool:
        """Fold one control message in; returns whether the plan changed.

        Active sets older than the current epoch are ignored, so replays and duplicates (the
        broker is at-least-once) are harmless.
        """
        if message.kind == "budget":
            self.requested_budget = dict(message.budget)
            return False
        if message.kind == "agreement":
            if message.epoch == self.epoch:
                self.live_agreement = dict(message.extra.get("live_agreement", {}))
                self.live_probes = int(message.extra.get("probes", 0))
            return False
        if message.kind == "link_version":
            if message.link_version is not None:
                self.latest_links = max(self.latest_links or 0, message.link_version)
            return False
        if message.kind != "active_set" or (message.epoch <= self.epoch and self.active):
            return False
        unknown = sorted(set(message.active) - set(self.models))
        if unknown:
            raise ValueError(
                f"control message epoch {message.epoch} activates unknown models {unknown}; "
                f"this worker's config has {list(self.models)}"
            )
        self.epoch = message.epoch
        self.active = tuple(sorted(message.active))
        self.link_version = message.link_version
        self.probe_every = message.probe_every
        self.budget = dict(message.budget)
        self.live_agreement, self.live_probes = {}, 0
        return True

    def plan(self, seq: int) -> Plan:
        """The plan for the frame with sequence number ``seq`` in its stream.

        Probe frames (every ``probe_every``-th, and all frames while warming up) run every
        model: they feed the trainer and measure live agreement of the synthesized outputs.
        """
        if self.warming_up:
            return Plan(epoch=self.epoch, active=self.models, probe=True, link_version=None)
        probe = self.probe_every > 0 and seq % self.probe_every == 0
        return Plan(
            epoch=self.epoch,
            active=self.models if probe else self.active,
            probe=probe,
            link_version=self.link_version,
        )
