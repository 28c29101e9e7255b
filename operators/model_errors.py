"""The text of a model's timeout, and what kind of failure an error names.

A result carries a failed model's error as text (``ModelResult.error``, on the wire and in the
split layout from another worker), and the metrics label failures by kind. Both kinds are read
from that text, so the words that mark a timeout are written and read here only.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "DECODE_FAILED",
    "NO_OUTPUT",
    "FailureKind",
    "failure_kind",
    "stuck_error",
    "timeout_error",
]

FailureKind = Literal["timeout", "links", "input", "model_error"]

_TIMED_OUT = "timed out"
DECODE_FAILED = "frame decode failed"
"""A frame whose image could not be decoded: the error of every model the plan had for it."""
NO_OUTPUT = "no output"
"""A model's output never reached the frame's result (the split layout's join timed out)."""


def timeout_error(model: str, seconds: float) -> str:
    """A call of ``model`` that did not return within ``seconds``."""
    return f"model {model} {_TIMED_OUT} after {seconds:.1f} s"


def stuck_error(model: str, since_s: float) -> str:
    """Calls refused while an abandoned call of ``model`` has not returned."""
    return (
        f"model {model} is stuck in a call that {_TIMED_OUT} {since_s:.1f} s ago; "
        "failing fast until it returns"
    )


def failure_kind(error: str) -> FailureKind:
    """``timeout`` (the call timed out, or the output never came), ``links`` (no model
    failed: the link version could not be used, or synthesis failed), ``input`` (the frame's
    image could not be decoded: no model ran, and a bad camera is not a model's fault) or
    ``model_error``."""
    if error.startswith(("link version ", "synthesis failed")):  # whatever words follow
        return "links"
    if error.startswith(DECODE_FAILED):
        return "input"
    if _TIMED_OUT in error or NO_OUTPUT in error:
        return "timeout"
    return "model_error"
