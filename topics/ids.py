"""What a stream id, frame id or model name may contain, and how long it may be.

Ids travel in every record, key Kafka messages, name metrics and end up in log lines. An id
holding a newline forges a log line, a bidi override (U+202E) makes a log line lie about what
it says, and an id of a megabyte is a memory and log amplifier. So ids are bounded and
printable; everything else about them (which alphabet, which separators) stays the writer's
choice, because camera gateways and model registries already have naming schemes of their own.

The rule, for writers in any language:

- an id is a non-empty Unicode string of at most :data:`MAX_ID_CHARS` code points
  (:data:`MAX_STREAM_ID_CHARS` for stream ids, so that the conventional frame id
  ``f"{stream_id}:{seq}"`` always fits in :data:`MAX_ID_CHARS`);
- it holds no character of the Unicode categories Cc (controls: NUL, tab, CR, LF, DEL, ...),
  Cf (format: zero-width and bidi controls), Cs (surrogates), Zl and Zp (line and paragraph
  separators). Spaces, punctuation, letters and digits of any script and emoji are allowed.

Free text (a dead letter's reason, a model's error) may hold newlines, since tracebacks do, but
is clipped to :data:`MAX_TEXT_CHARS` so that one record stays within the record size limit.
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = [
    "FORBIDDEN_CATEGORIES",
    "MAX_ID_CHARS",
    "MAX_STREAM_ID_CHARS",
    "MAX_TEXT_CHARS",
    "clip_text",
    "id_problem",
]

MAX_ID_CHARS: Final = 256
"""Longest frame id, model name or other id, in Unicode code points."""

MAX_STREAM_ID_CHARS: Final = 200
"""Longest stream id: ``f"{stream_id}:{seq}"`` with a 20-digit seq stays within MAX_ID_CHARS."""

MAX_TEXT_CHARS: Final = 8192
"""Longest free text (reasons, errors) a record keeps; longer text is clipped with a marker."""

FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories an id may not contain: controls, format characters, surrogates and line
or paragraph separators."""

_CLIPPED: Final = " ... [clipped]"


def id_problem(value: object, max_chars: int = MAX_ID_CHARS) -> str | None:
    """Why ``value`` is not a valid id, or None if it is."""
    if not isinstance(value, str) or not value:
        return "expected a non-empty str"
    if len(value) > max_chars:
        return f"expected at most {max_chars} characters, got {len(value)}"
    if value.isascii() and value.isprintable():  # the common case, without a Python loop
        return None
    for position, char in enumerate(value):
        category = unicodedata.category(char)
        if category in FORBIDDEN_CATEGORIES:
            return (
                f"character {position} is U+{ord(char):04X} (category {category}); ids may not "
                "hold control, format or line-separator characters"
            )
    return None


def clip_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut to at most ``max_chars`` characters, saying so at the end when it was cut."""
    if len(text) <= max_chars:
        return text
    return text[: max_chars - len(_CLIPPED)] + _CLIPPED
