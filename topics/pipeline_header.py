"""Which pipeline wrote a record: the ``mlink-pipeline`` header, the writer's ``name``.

Two pipelines given one ``topics.prefix`` read each other's frames and write one results
topic: every frame got two results with different models, and a consumer keeping the first
per frame id lost models on a quarter of them (a new user's audit, stop 45). Each worker
stamps what it writes, so a reader can tell the other pipeline's records, and a worker can
refuse a prefix another live pipeline uses (:mod:`mlink.operators.control_operators`).
Records without the header (older writers, a user's own producer) belong to nobody.
"""

from __future__ import annotations

from typing import Any, Final

from mlink.topics.headers import header_values

__all__ = ["PIPELINE_HEADER", "other_writer", "pipeline_header", "written_by"]

PIPELINE_HEADER: Final = "mlink-pipeline"
MAX_NAME_BYTES: Final = 249  # a pipeline's name is its consumer group id, under Kafka's rules


def pipeline_header(name: str) -> tuple[str, bytes]:
    """The header a pipeline named ``name`` stamps on every record it writes."""
    return PIPELINE_HEADER, name.encode()


def written_by(headers: Any) -> str | None:
    """The pipeline name in ``headers`` (pairs or a mapping, as any client gives them), or
    None when the record carries none (or one too long or not text to be a name)."""
    for value in header_values(headers, PIPELINE_HEADER)[:1]:
        if value and len(value) <= MAX_NAME_BYTES:
            try:
                return value.decode()
            except UnicodeDecodeError:
                return None
    return None


def other_writer(headers: Any, own: str) -> str | None:
    """The pipeline that wrote a record when it is not ``own``; None for ``own``'s records
    and for those that name no writer (which count as ``own``'s)."""
    writer = written_by(headers)
    return writer if writer is not None and writer != own else None
