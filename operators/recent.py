"""A bounded set of recently seen ids: dedupe of redelivered records without unbounded memory."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["RecentIds"]


class RecentIds:
    """The last ``maxlen`` ids added, with O(1) membership; older ids are forgotten.

    At-least-once delivery repeats records from the last committed offset, which is recent: a
    window of a few hundred thousand ids catches every redelivery at bounded memory.
    """

    __slots__ = ("_ids", "maxlen")

    def __init__(self, maxlen: int = 200_000) -> None:
        if maxlen < 1:
            raise ValueError(f"RecentIds: maxlen must be >= 1, got {maxlen}")
        self.maxlen = maxlen
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, item: str) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)
