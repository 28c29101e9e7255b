"""Frame sources: read a config's videos, images or factory and push the frames onto Kafka.

This is the pipeline's only entry point for pixels. Three layers, each usable alone:

- :func:`iter_source` turns a :class:`~mlink.deploy.config.SourceConfig` into
  ``(stream_id, image)`` pairs, without Kafka (tests and offline tools use it directly).
- :class:`FrameProducer` encodes images as :class:`~mlink.topics.records.Frame` records and
  sends them keyed by stream id, so a stream's frames stay in order in one partition.
- :func:`produce_source` / :func:`produce_frames` tie the two together, numbering each stream's
  frames from 0 so frame ids (``f"{stream_id}:{seq}"``) are unique and predictable.

Create the pipeline's topics first (:func:`mlink.deploy.topics_setup.create_pipeline_topics`):
producing to a missing topic lets the broker auto-create it with its own partition count.
"""

from __future__ import annotations

import glob
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import cv2
import numpy as np

from mlink.deploy.config import ConfigError, PipelineConfig, SourceConfig, load_object
from mlink.topics.bootstrap import bootstrap_servers
from mlink.topics.codec import encode_record
from mlink.topics.frames import DEFAULT_MAX_BYTES, encode_frame
from mlink.topics.limits import DEFAULT_LIMITS
from mlink.topics.records import Frame

__all__ = [
    "MAX_REQUEST_BYTES",
    "FrameProducer",
    "ProduceError",
    "iter_source",
    "produce_frames",
    "produce_source",
    "send_all",
]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES: Final = 2 * 1024 * 1024
"""Producer ``max_request_size``: a :data:`~mlink.topics.frames.DEFAULT_MAX_BYTES` frame plus
its record fields and batch overhead fits with room to spare (kafka-python's default is 1 MiB,
which a 900 kB frame plus overhead can exceed once linger batches two together)."""


class ProduceError(RuntimeError):
    """The broker did not accept one or more frames."""


# -- reading sources --------------------------------------------------------------------------


def _video_frames(paths: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    stems: dict[str, str] = {}
    for path in paths:
        stem = Path(path).stem
        if stem in stems:
            raise ConfigError(
                f"source.videos: {stems[stem]!r} and {path!r} would both be stream {stem!r}; "
                "each video is one stream named after its file stem, so rename one"
            )
        stems[stem] = path
        if not Path(path).is_file():
            raise FileNotFoundError(f"source.videos: video file {path!r} does not exist")
    for path in paths:
        capture = cv2.VideoCapture(path)
        try:
            if not capture.isOpened():
                raise ConfigError(
                    f"source.videos: OpenCV cannot open {path!r}; check that it is a video in a "
                    "format this OpenCV build decodes (e.g. mp4/H.264, avi/MJPEG)"
                )
            stem = Path(path).stem
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                yield stem, image
        finally:
            capture.release()


def _image_frames(pattern: str, stream_id: str) -> Iterator[tuple[str, np.ndarray]]:
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise FileNotFoundError(
            f"source.images: the glob {pattern!r} matches no files (relative to "
            f"{Path.cwd()}); check the pattern, e.g. 'data/frames/*.png'"
        )
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)  # keeps grayscale 2-D
        if image is None:
            raise ValueError(f"source.images: OpenCV cannot read {path!r} as an image")
        yield stream_id, image


def _factory_frames(
    factory: str, args: dict[str, Any], stream_id: str
) -> Iterator[tuple[str, np.ndarray]]:
    make = load_object(factory)
    if not callable(make):
        raise ConfigError(f"source.factory {factory!r} is not callable")
    items = make(**args)
    try:
        iterator = iter(items)
    except TypeError:
        raise ConfigError(
            f"source.factory {factory!r} returned {type(items).__name__}, not an iterable of "
            "frames or (stream_id, frame) pairs"
        ) from None
    for item in iterator:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            yield item[0], np.asarray(item[1])
        else:
            yield stream_id, np.asarray(item)


def iter_source(config: SourceConfig) -> Iterator[tuple[str, np.ndarray]]:
    """The ``(stream_id, image)`` pairs of a source, in order, at most ``config.limit`` of them.

    - ``videos``: each file in turn, frame by frame (BGR, as OpenCV decodes them); the stream id
      is the file stem.
    - ``images``: the files of the glob in sorted path order, one stream ``config.stream_id``.
    - ``factory``: ``load_object(factory)(**args)`` yields images or ``(stream_id, image)``
      pairs; bare images belong to stream ``config.stream_id``.

    Relative paths are relative to the working directory. A ``topic`` source has no frames to
    read here (they are already on Kafka) and raises :class:`ConfigError`.
    """
    if config.videos:
        pairs = _video_frames(list(config.videos))
    elif config.images:
        pairs = _image_frames(config.images, config.stream_id)
    elif config.factory:
        pairs = _factory_frames(config.factory, dict(config.args), config.stream_id)
    else:
        raise ConfigError(
            f"source.topic {config.topic!r}: the frames are already on Kafka, there is nothing to "
            "read; consume that topic instead"
        )
    return itertools.islice(pairs, config.limit)


# -- producing --------------------------------------------------------------------------------


class FrameProducer:
    """Sends images to one topic as :class:`Frame` records keyed by stream id.

    Wraps a kafka-python ``KafkaProducer`` with ``acks="all"`` (a frame counts as sent once every
    in-sync replica has it) and a short ``linger_ms`` (small batches, low latency). Sends are
    asynchronous; a delivery failure is raised by the next :meth:`send`, :meth:`flush` or
    :meth:`close` as :class:`ProduceError`, so failures are never silent. Extra keyword
    arguments go to ``KafkaProducer`` (``security_protocol``, ``sasl_*``, ...).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        encoding: Literal["png", "jpeg", "raw"] = "png",
        jpeg_quality: int = 90,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        max_pixels: int | None = DEFAULT_LIMITS.max_pixels,
        linger_ms: int = 5,
        **producer_kwargs: Any,
    ) -> None:
        from kafka import KafkaProducer  # deferred: importing kafka costs ~0.1 s

        self.topic = topic
        self.encoding = encoding
        self.jpeg_quality = jpeg_quality
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.sent = 0
        self._errors: list[tuple[str, BaseException]] = []
        self._lock = threading.Lock()
        producer_kwargs.setdefault("client_id", "mlink-frame-producer")
        producer_kwargs.setdefault("max_request_size", MAX_REQUEST_BYTES)
        from kafka.errors import KafkaError

        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers(bootstrap),
                acks="all",
                linger_ms=linger_ms,
                **producer_kwargs,
            )
        except KafkaError as exc:
            raise ProduceError(
                f"cannot connect a producer to Kafka at {bootstrap!r} ({exc}); start a broker "
                "(mlink broker) or fix 'broker' in the config / MLINK_BROKER"
            ) from exc

    def _failed(self, frame_id: str, exc: BaseException) -> None:  # runs on the sender thread
        with self._lock:
            self._errors.append((frame_id, exc))

    def _raise_errors(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            frame_id, first = errors[0]
            raise ProduceError(
                f"{len(errors)} frame(s) were not delivered to {self.topic!r}; first: "
                f"{frame_id!r}: {first!r}. Check that the broker is up and the topic exists"
            ) from first

    def send_frame(self, frame: Frame) -> Frame:
        """Send an already built record (e.g. a ``ref`` frame) keyed by its stream id."""
        self._raise_errors()
        future = self._producer.send(
            self.topic, value=encode_record(frame), key=frame.stream_id.encode("utf-8")
        )
        future.add_errback(lambda exc, fid=frame.frame_id: self._failed(fid, exc))
        self.sent += 1
        return frame

    def send(
        self, stream_id: str, seq: int, image: np.ndarray, timestamp: float | None = None
    ) -> Frame:
        """Encode ``image`` as frame ``f"{stream_id}:{seq}"`` and send it; returns the record."""
        frame = encode_frame(
            image,
            stream_id,
            seq,
            timestamp,
            encoding=self.encoding,
            jpeg_quality=self.jpeg_quality,
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
        )
        return self.send_frame(frame)

    @classmethod
    def for_pipeline(cls, config: PipelineConfig, bootstrap: str) -> FrameProducer:
        """A producer of ``config``'s frames topic that encodes as its source says and refuses
        exactly what its workers refuse (``limits``), with its Kafka client settings."""
        limits = config.limits.limits()
        return cls(
            bootstrap,
            config.topics.names().frames,
            encoding=config.source.encoding,
            jpeg_quality=config.source.jpeg_quality,
            max_bytes=limits.max_frame_data_bytes,
            max_pixels=limits.max_pixels,
            **config.producer_kwargs(),
        )

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until every frame sent so far is acknowledged; raise if any was not."""
        self._producer.flush(timeout=timeout)
        self._raise_errors()

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then release the producer's connections and thread."""
        try:
            self.flush(timeout)
        finally:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> FrameProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:  # do not mask the original error with a flush failure
            try:
                self.close()
            except Exception:
                log.exception("closing the frame producer after an error failed")


def send_all(
    producer: FrameProducer,
    pairs: Iterable[tuple[str, np.ndarray]],
    rate: float | None = None,
    on_sent: Callable[[Frame], object] | None = None,
) -> int:
    """Number each stream's frames from 0, pace them at ``rate`` per second, send them; return
    how many. ``on_sent`` sees each record (a caller that waits for results keeps their ids;
    a never-ending source keeps nothing)."""
    seqs: dict[str, int] = {}
    start = time.monotonic()
    sent = 0
    for sent, (stream_id, image) in enumerate(pairs, start=1):
        if rate is not None:
            delay = start + (sent - 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        seq = seqs.get(stream_id, 0)
        seqs[stream_id] = seq + 1
        frame = producer.send(stream_id, seq, image)
        if on_sent is not None:
            on_sent(frame)
    return sent


def produce_frames(
    bootstrap: str,
    topic: str,
    frames: Iterable[tuple[str, np.ndarray]],
    encoding: Literal["png", "jpeg", "raw"] = "png",
    jpeg_quality: int = 90,
) -> list[str]:
    """Send ``(stream_id, image)`` pairs to ``topic``; return their frame ids in send order.

    Each stream's frames are numbered from 0. Returns once every frame is acknowledged.
    """
    ids: list[str] = []
    with FrameProducer(bootstrap, topic, encoding=encoding, jpeg_quality=jpeg_quality) as p:
        send_all(p, frames, on_sent=lambda frame: ids.append(frame.frame_id))
    return ids


def produce_source(
    config: PipelineConfig,
    bootstrap: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> int:
    """Push every frame of ``config.source`` to the pipeline's frames topic; return the count.

    ``bootstrap`` defaults to ``config.broker``. ``limit`` caps the frames on top of
    ``source.limit``; ``source.rate`` paces them (frames per second across all streams).
    ``progress`` shows a tqdm bar on stderr. A ``topic`` source produces nothing: its frames
    are already on Kafka.
    """
    source = config.source
    if source.topic:
        message = (
            f"source is topic {source.topic!r}: its frames are already on Kafka, nothing to produce"
        )
        log.info(message)
        if progress:
            print(message, file=sys.stderr)
        return 0
    bootstrap = bootstrap or config.broker
    if not bootstrap:
        raise ConfigError(
            f"pipeline {config.name!r} has no broker to produce to: pass bootstrap='host:port', "
            "set 'broker' in the config, or export MLINK_BROKER"
        )
    from tqdm import tqdm

    topic = config.topics.names().frames
    pairs = iter_source(source)
    if limit is not None:
        pairs = itertools.islice(pairs, limit)
    caps = [n for n in (limit, source.limit) if n is not None]
    with (
        tqdm(
            total=min(caps) if caps else None,
            desc=f"frames -> {topic}",
            unit="frame",
            disable=not progress,
        ) as bar,
        FrameProducer.for_pipeline(config, bootstrap) as producer,
    ):
        sent = send_all(producer, pairs, source.rate, on_sent=lambda _: bar.update(1))
    log.info("produced %d frames to %s", sent, topic)
    return sent
