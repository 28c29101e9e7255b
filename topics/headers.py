"""Kafka record headers as any client gives them: a list of ``(name, value)`` pairs (faust,
aiokafka, kafka-python) or a mapping, names as str or bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["header_values"]


def header_values(headers: Any, name: str) -> list[bytes]:
    """Every value of header ``name`` (``b""`` for one that is not bytes), in order."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    found = []
    for item in items:
        try:
            key, value = item
        except (TypeError, ValueError):
            continue
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if key == name:
            found.append(bytes(value) if isinstance(value, bytes | bytearray) else b"")
    return found
