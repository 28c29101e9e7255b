"""What a live run's synthesized outputs cost, priced as the controller priced them when it
planned: an output of the paper's links costs the target's ensemble and one link per source;
an output of a stream mode (reuse, prior, a box head, follow ...) costs what the trainer measured
for that mode (its curve's ``synth_ms``), because that is all the frame operator ran for it.
Pricing every synthesized output as the paper's links charged stream modes an ensemble they
never ran, and understated what a stream plan saves.

Which mode made an output is the schedule of the frame's epoch, replayed from the control log
the workers obeyed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mlink.linkstore.schedule import Mode, Schedule
from mlink.linkstore.store import LinkStore
from mlink.linkstore.streamfit import StreamFit
from mlink.operators.state import ControlState
from mlink.topics.records import ControlMessage

__all__ = ["SynthesisCosts", "schedules_by_epoch", "stored_synthesis_costs"]


@dataclass(slots=True)
class SynthesisCosts:
    """ms of synthesis for one link version: per (source, target) link and per target ensemble
    (the paper's links), and per (target, mode key) for the stream modes."""

    links: dict[tuple[str, str], float] = field(default_factory=dict)
    ensembles: dict[str, float] = field(default_factory=dict)
    modes: dict[tuple[str, str], float] = field(default_factory=dict)

    def of(self, target: str, sources: Iterable[str], mode: Mode | None = None) -> float:
        """One output of ``target``: by ``mode`` when a stream schedule made it, else the
        paper's ensemble over ``sources``."""
        if mode is not None and mode.kind != "links":
            return self.modes.get((target, mode.key()), 0.0)
        return self.ensembles.get(target, 0.0) + sum(
            self.links.get((s, target), 0.0) for s in sources
        )


def stored_synthesis_costs(store: str) -> dict[int, SynthesisCosts]:
    """Per link version in ``store``, the synthesis costs its trainer measured."""
    out = {}
    for v in LinkStore(store).versions():
        meta = v.meta
        links = {(c["source"], c["target"]): c.get("ms", 0.0) for c in meta.get("link_costs", [])}
        ensembles = {t: c.get("ms", 0.0) for t, c in meta.get("ensemble_costs", {}).items()}
        curves = StreamFit.curves_from_meta(meta.get("stream", {}))
        modes = {(t, c.mode.key()): c.synth_ms for t, cs in curves.items() for c in cs}
        out[v.version] = SynthesisCosts(links, ensembles, modes)
    return out


def schedules_by_epoch(
    models: Iterable[str], control: Sequence[ControlMessage]
) -> Mapping[int, Schedule]:
    """The stream schedule of every epoch the control log published one for (every epoch, not
    the last few a worker holds)."""
    state = ControlState(tuple(sorted(models)))
    out: dict[int, Schedule] = {}
    for message in control:
        applied = state.apply(message).status == "applied"
        if applied and message.kind == "active_set" and state.schedule is not None:
            out[state.epoch] = state.schedule
    return out
