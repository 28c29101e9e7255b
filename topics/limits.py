"""Resource limits of one deployment: one setting each, applied by every client and decoder.

Before this object the limits disagreed: ``encode_frame`` allowed 900 kB of image, the frame
topics 2 MiB, and faust's producer about 1 MB, so a 1.5 MB frame entered the pipeline and then
crashed the planner that forwarded it. Now one number, :attr:`Limits.max_record_bytes`, bounds
every record value, and everything else is derived from it by one rule:

- a record value (the msgpack bytes of any record) is at most ``max_record_bytes``; decoders
  refuse more before unpacking;
- a frame's image data leaves room for two envelopes (:data:`ENVELOPE_BYTES` each): its own
  record fields plus the plan the planner stamps on it, and the dead letter that may wrap the
  whole record, so ``max_frame_data_bytes = max_record_bytes - 2 * ENVELOPE_BYTES``, and a dead
  letter keeps at most ``max_dead_letter_value_bytes = max_record_bytes - ENVELOPE_BYTES`` of
  the original;
- every Kafka client and topic carries one more envelope for the key, headers and batch framing:
  ``max_message_bytes = max_record_bytes + ENVELOPE_BYTES`` is the topics' ``max.message.bytes``,
  the producers' ``max_request_size`` and the consumers' per-partition fetch size.

Apply it everywhere with the helpers: :meth:`Limits.topic_config`, :meth:`Limits.faust_settings`,
:meth:`Limits.kafka_producer_kwargs`, :meth:`Limits.kafka_consumer_kwargs`,
:meth:`Limits.aiokafka_producer_kwargs`, :meth:`Limits.aiokafka_consumer_kwargs`.

Id length and characters are not a setting: they are part of the wire contract that writers in
other languages follow too, so they live in :mod:`mlink.topics.ids`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["DEFAULT_LIMITS", "ENVELOPE_BYTES", "Limits"]

ENVELOPE_BYTES: Final = 64 * 1024
"""Room for everything around a payload: a record's other fields (ids of up to 256 characters,
a plan naming up to a few hundred models), a dead letter's reason (clipped to 8192 characters),
or a Kafka key, headers and batch header."""

_MIN_RECORD_BYTES: Final = 4 * ENVELOPE_BYTES
_MAX_RECORD_BYTES: Final = 512 * 1024 * 1024  # far below Kafka's int32 sizes
_MAX_PIXELS: Final = 1 << 30  # OpenCV's own default ceiling (OPENCV_IO_MAX_IMAGE_PIXELS)
_FETCH_MAX_BYTES: Final = 50 * 1024 * 1024  # aiokafka's and kafka-python's default


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The resource limits of a deployment. Every field has a safe default."""

    max_record_bytes: int = 2 * 1024 * 1024
    """Largest record value, in bytes, any client produces or any decoder accepts. 2 MiB fits a
    1080p JPEG or a 720p PNG with room to spare, and is twice Kafka's 1 MB default, so brokers
    must be told (``topic_config()``); larger frames belong in ``ref`` frames."""

    max_pixels: int = 1 << 24
    """Largest image, in pixels (width x height), a frame may decode to: 16.8 M covers 4096 x
    4096 and DCI 4K, and bounds one decoded image to 64 MiB (4 channels). Checked from the PNG
    or JPEG header before any pixel is decoded, since a 440 kB PNG can claim 20000 x 20000."""

    image_cache_bytes: int = 256 * 1024 * 1024
    """Budget of a worker's decoded-image cache (:class:`~mlink.topics.image_cache.ImageCache`),
    in bytes of pixels: ~290 VGA frames or four images of ``max_pixels``. 0 disables caching."""

    ref_root: str | None = None
    """Directory ``ref`` frames may point into; None (the default) refuses every ``ref`` frame,
    since a ref makes a worker read whatever local path a record names. With a root, a ref's
    resolved real path must lie inside it: no ``..``, no symlink out of it, no URL but
    ``file://``."""

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_record_bytes", _MIN_RECORD_BYTES, _MAX_RECORD_BYTES),
            ("max_pixels", 1, _MAX_PIXELS),
            ("image_cache_bytes", 0, 1 << 48),
        ):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(
                    f"Limits.{name} must be an int in [{low:,}, {high:,}], got {value!r}"
                )
        root = self.ref_root
        if root is not None and (not isinstance(root, str) or not os.path.isabs(root)):
            raise ValueError(
                f"Limits.ref_root must be None or an absolute directory path, got {root!r}; "
                "workers may run in other directories, so a relative root would mean different "
                "places"
            )

    @property
    def max_frame_data_bytes(self) -> int:
        """Largest encoded image a frame may carry (``encode_frame``'s default ``max_bytes``)."""
        return self.max_record_bytes - 2 * ENVELOPE_BYTES

    @property
    def max_dead_letter_value_bytes(self) -> int:
        """Most original bytes a dead letter may keep so that it is itself a valid record:
        every valid frame fits whole; a longer input (up to ``max_message_bytes`` can arrive)
        must be cut, saying so in the reason."""
        return self.max_record_bytes - ENVELOPE_BYTES

    @property
    def max_message_bytes(self) -> int:
        """What every topic and client must carry: a record plus key, headers and batch framing."""
        return self.max_record_bytes + ENVELOPE_BYTES

    @property
    def max_image_bytes(self) -> int:
        """Largest decoded image, in bytes: ``max_pixels`` of up to 4 uint8 channels."""
        return 4 * self.max_pixels

    def topic_config(self) -> dict[str, str]:
        """Topic configs for every topic (``max.message.bytes``), for ``TopicSpec.config``."""
        return {"max.message.bytes": str(self.max_message_bytes)}

    def faust_settings(self) -> dict[str, Any]:
        """Keyword arguments for ``faust.App(...)``: its producer and consumer sizes."""
        return {
            "producer_max_request_size": self.max_message_bytes,
            "consumer_max_fetch_size": self.max_message_bytes,
        }

    def kafka_producer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaProducer``."""
        return {"max_request_size": self.max_message_bytes}

    def kafka_consumer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaConsumer``."""
        return {
            "max_partition_fetch_bytes": self.max_message_bytes,
            "fetch_max_bytes": max(_FETCH_MAX_BYTES, self.max_message_bytes),
        }

    def aiokafka_producer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiokafka.AIOKafkaProducer``."""
        return {"max_request_size": self.max_message_bytes}

    def aiokafka_consumer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiokafka.AIOKafkaConsumer``."""
        return self.kafka_consumer_kwargs()


DEFAULT_LIMITS: Final = Limits()
"""The limits every function uses when it is not given any."""
