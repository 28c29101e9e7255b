"""Stream synthesis (schedules, detector links, memory) replayed offline and as bench rows."""

from mlink.eval.streaming.simulate import StreamConfig, StreamRun, simulate

__all__ = ["StreamConfig", "StreamRun", "simulate"]
