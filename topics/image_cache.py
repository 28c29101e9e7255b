"""A least-recently-used cache of decoded images, bounded in bytes.

The models of one worker share a frame's decoded pixels, so each frame is decoded once. A cache
bounded by a count of entries is bounded in nothing: 512 entries of 8K frames hold 50 GB. This
one counts the bytes of the arrays it holds and evicts the least recently used until it fits;
an image larger than the whole budget is returned but never kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

__all__ = ["ImageCache"]


class ImageCache:
    """``get``/``put`` images by key (a frame id) within ``max_bytes`` of pixel data.

    Thread-safe: decoding may run in executor threads while the event loop reads.
    """

    def __init__(self, max_bytes: int) -> None:
        if type(max_bytes) is not int or max_bytes < 0:
            raise ValueError(f"ImageCache: max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, key: object) -> bool:
        return key in self._images

    def get(self, key: str) -> np.ndarray | None:
        """The cached image for ``key`` (now the most recently used), or None."""
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
            return image

    def put(self, key: str, image: np.ndarray) -> None:
        """Keep ``image`` under ``key``, evicting the least recently used to stay in budget."""
        size = int(image.nbytes)
        with self._lock:
            old = self._images.pop(key, None)
            if old is not None:
                self.nbytes -= int(old.nbytes)
            if size > self.max_bytes:
                return
            self._images[key] = image
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, evicted = self._images.popitem(last=False)
                self.nbytes -= int(evicted.nbytes)

    def get_or_put(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached image for ``key``, else ``make()``'s, which is then cached.

        ``make`` runs outside the lock (decoding is slow); two threads missing the same key
        may both decode it, and the second result replaces the first.
        """
        image = self.get(key)
        if image is None:
            image = make()
            self.put(key, image)
        return image

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self.nbytes = 0
