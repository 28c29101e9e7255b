"""Beyond MLink on streams: temporal links, and links combined with frame filtering.

See :mod:`mlink.eval.temporal.methods` for what each method does and how it plans.
"""

from mlink.eval.temporal.methods import (
    change_filter,
    mlink_with_filtering,
    plain_mlink,
    reuse_schedule,
    temporal_mlink,
)
from mlink.eval.temporal.policy import Policy, TemporalConfig

__all__ = [
    "Policy",
    "TemporalConfig",
    "change_filter",
    "mlink_with_filtering",
    "plain_mlink",
    "reuse_schedule",
    "temporal_mlink",
]
