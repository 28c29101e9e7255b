"""Kafka topic names of one MLink deployment, and how each topic is keyed.

Names live in one frozen object so every operator of a deployment agrees on them, and a
prefix lets several deployments (or test runs) share one broker without crosstalk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Final, Self

__all__ = ["TopicNames"]

# Kafka's own rule: at most 249 characters of ASCII letters, digits, '.', '_' and '-'.
_LEGAL: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The topics of a deployment.

    Attributes:
        frames: incoming :class:`~mlink.topics.records.Frame` records, keyed by stream id
            so a stream's frames stay in order in one partition.
        planned: the same frames stamped with their :class:`~mlink.topics.records.Plan` by
            the planner, keyed by stream id; model operators read only this topic, so every
            operator sees one decision per frame.
        outputs: :class:`~mlink.topics.records.ModelOutput` records, keyed by frame id so
            every output of a frame meets in one partition, where the joiner assembles it.
        results: :class:`~mlink.topics.records.FrameResult` records, keyed by frame id for
            the same reason, so a result lands beside the outputs it was built from.
        control: :class:`~mlink.topics.records.ControlMessage` records; one partition so
            every worker sees decisions in one order, compacted so a restarting worker
            reads only the latest decision per key.
        dead_letter: :class:`~mlink.topics.records.DeadLetter` records holding messages an
            operator could not process, kept for inspection and replay.
        samples: results of probe frames (every model executed), the trainer's input; one
            partition so a single trainer sees them all.
    """

    frames: str = "mlink.frames"
    outputs: str = "mlink.outputs"
    results: str = "mlink.results"
    control: str = "mlink.control"
    dead_letter: str = "mlink.dead-letter"
    planned: str = "mlink.planned"
    samples: str = "mlink.samples"

    def __post_init__(self) -> None:
        for f in fields(self):
            name = getattr(self, f.name)
            if not isinstance(name, str) or not _LEGAL.fullmatch(name) or name in {".", ".."}:
                raise ValueError(
                    f"TopicNames.{f.name}: {name!r} is not a legal Kafka topic name; use 1-249 "
                    "ASCII letters, digits, '.', '_' or '-'"
                )
        names = self.all()
        if len(set(names)) != len(names):
            raise ValueError(
                f"TopicNames: each role needs its own topic, got {names!r}; "
                "give every field a distinct name"
            )

    @classmethod
    def with_prefix(cls, prefix: str) -> Self:
        """Names like ``f"{prefix}.frames"``, to isolate one deployment or test run."""
        if not isinstance(prefix, str) or not prefix or prefix.endswith("."):
            raise ValueError(
                f"TopicNames.with_prefix: prefix must be a non-empty str not ending in '.', "
                f"got {prefix!r}; the '.' separator is added for you"
            )
        return cls(
            frames=f"{prefix}.frames",
            outputs=f"{prefix}.outputs",
            results=f"{prefix}.results",
            control=f"{prefix}.control",
            dead_letter=f"{prefix}.dead-letter",
            planned=f"{prefix}.planned",
            samples=f"{prefix}.samples",
        )

    def all(self) -> list[str]:
        """Every topic, in a fixed order, e.g. to create them all before starting."""
        return [getattr(self, f.name) for f in fields(self)]
