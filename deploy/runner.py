"""Running a pipeline: worker processes, results, control commands, status. The Python API
behind ``mlink run / worker / budget`` (``status``: :mod:`mlink.deploy.pipeline_status`).

Start order (stop in reverse): broker, topics, workers (each replays the control topic before
it plans), result collector, source. Workers are separate processes (``python -m faust -A
mlink.deploy.worker_app worker``) in one consumer group, so scaling out is starting more of
them, on this machine or another one pointed at the same broker and linkstore directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.config import ConfigError, PipelineConfig, with_broker
from mlink.deploy.health import agent_crashes_in
from mlink.deploy.processes import WorkerProcess
from mlink.deploy.supervisor import WorkerSupervisor
from mlink.deploy.tail import assign_partitions
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.operators.state import ControlState
from mlink.topics.bootstrap import bootstrap_servers
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.pipeline_header import other_writer, pipeline_header
from mlink.topics.records import ControlMessage, DecodeError, FrameResult
from mlink.topics.signing import SignatureError, Signer

__all__ = [
    "ResultCollector",
    "RunReport",
    "broker_for",
    "publish_control",
    "read_control",
    "require_sendable_source",
    "run_pipeline",
    "set_budget",
]

log = logging.getLogger("mlink.runner")


class ResultCollector:
    """Reads the results topic in a background thread, keeping the first result per frame.

    ``only_new``: read only results written after it starts. Frame ids are ``stream:seq``, the
    same in every run of a source, so on a broker that outlives a run (a Kafka cluster named in
    the config) the previous run's results would otherwise come first and be kept, and this
    run's counted as duplicates.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str | None = None,
        client: Mapping[str, Any] | None = None,
        only_new: bool = False,
    ) -> None:
        from kafka import KafkaConsumer

        self.results: dict[str, FrameResult] = {}
        self.received_at: dict[str, float] = {}
        self.duplicates = 0
        self.duplicate_ids: Counter[str] = Counter()
        self.undecodable = 0
        self._stop = threading.Event()
        options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers(bootstrap),
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 10_000,
            **dict(client or {}),
        }
        if only_new:  # no group: this reader's own partitions, from their ends now
            self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **options)
            _from_the_end(self._consumer, topic)
        else:
            self._consumer = KafkaConsumer(
                topic,
                group_id=group or f"mlink-collector-{os.getpid()}-{time.time_ns()}",
                enable_auto_commit=True,
                **options,
            )
        self._thread = threading.Thread(target=self._run, name="mlink-results", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batches = self._consumer.poll(timeout_ms=200)
            now = time.time()
            for records in batches.values():
                for record in records:
                    try:
                        result = decode_record(record.value, FrameResult)
                    except DecodeError:
                        self.undecodable += 1
                        continue
                    if result.frame_id in self.results:
                        self.duplicates += 1
                        self.duplicate_ids[result.frame_id] += 1
                    else:
                        self.results[result.frame_id] = result
                        self.received_at[result.frame_id] = now

    def duplicates_of(self, frame_ids: Iterable[str]) -> int:
        """Repeated results of these frames: a run's own duplicates, not the repeats of
        frames some other producer sent to the same topic (those are no result of its)."""
        return sum(self.duplicate_ids[f] for f in set(frame_ids))

    def wait_for(self, frame_ids: set[str], timeout: float, progress: Any = None) -> bool:
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            have = len(frame_ids & self.results.keys())
            if progress is not None and have > done:
                progress.update(have - done)
                done = have
            if have == len(frame_ids):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _from_the_end(consumer: Any, topic: str, wait_s: float = 30.0) -> None:
    """Every partition of ``topic`` from its end now, past what is already there."""
    deadline = time.monotonic() + wait_s
    assign_partitions(consumer, topic, wait_s=wait_s)
    # Tansu reports the end of a multi-record batch as its first offset plus one (docs/broker.md),
    # so that position can lie inside an earlier run's last batch: read what is already there,
    # or its results (the same frame ids) would be kept and this run's dropped as duplicates.
    while consumer.poll(timeout_ms=500) and time.monotonic() < deadline:
        pass


def publish_control(bootstrap: str, config: PipelineConfig, *messages: ControlMessage) -> None:
    """Send control messages (e.g. a budget command), in order, and wait until the broker has
    them. The pipeline's topics are created first if missing, so a command sent before the
    first worker starts lands on a control topic of one partition, which the worker replays."""
    from kafka import KafkaProducer

    create_pipeline_topics(config, bootstrap)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers(bootstrap), acks="all", **config.producer_kwargs()
    )
    topic, signer = config.topics.names().control, Signer.from_env()
    try:
        for message in messages:  # each acknowledged before the next: the log keeps their order
            key, value = message.kind.encode(), encode_record(message)
            headers = [pipeline_header(config.name), *signer.sign(topic, key, value)]
            producer.send(topic, key=key, value=value, headers=headers).get(30)
    finally:
        producer.close()


def set_budget(bootstrap: str, config: PipelineConfig, budget: dict[str, float]) -> None:
    """Ask the running controller for a new budget; workers switch at the next epoch."""
    if not budget:
        raise ValueError("give at least one of ms, memory_mb, fraction")
    message = ControlMessage(kind="budget", epoch=0, issued_at=time.time(), budget=budget)
    publish_control(bootstrap, config, message)


def budget_answer(state: ControlState, requested: Mapping[str, float]) -> tuple[str, str] | None:
    """What the controller did with a budget request, once the control log says: ``("planned",
    epoch)`` or ``("refused", why)``; None while it has not answered (or, in warm-up, will not
    until the first links)."""
    refused = state.budget_refused
    if refused is not None and refused["budget"] == dict(requested):
        return "refused", str(refused["reason"])
    if state.epoch > 0 and state.budget == dict(requested):
        return "planned", f"epoch {state.epoch}"
    return None


def wait_for_budget(
    bootstrap: str, config: PipelineConfig, requested: Mapping[str, float], timeout: float
) -> tuple[tuple[str, str] | None, ControlState]:
    """:func:`budget_answer`, polling the control log for up to ``timeout`` seconds, and the
    state it was read from (the plan the answer names)."""
    deadline = time.monotonic() + timeout
    while True:
        state = read_control(bootstrap, config)[0]
        answer = budget_answer(state, requested)
        if answer is not None or time.monotonic() >= deadline:
            return answer, state
        time.sleep(1.0)


def read_control(
    bootstrap: str,
    config: PipelineConfig,
    timeout: float = 5.0,
    unverified: list[int] | None = None,
    signer: Signer | None = None,
    refused: list[tuple[int, str]] | None = None,
    foreign: dict[str, float] | None = None,
) -> tuple[ControlState, list[ControlMessage]]:
    """Replay the control topic, as a worker does; return the state and every message (none
    when the topic does not exist yet: no worker has started, and reading must not create it).
    ``unverified`` collects the offsets of records that fail ``MLINK_SIGNING_KEY``'s check:
    skipped like the workers skip them, and all of them when the key list lacks the one the
    log was signed with (a key roll that forgot the old key), which reads as an empty log.
    ``signer``: verify with it instead of ``MLINK_SIGNING_KEY``'s (``Signer()``: accept every
    record, to read an unsigned log once when signing is turned on). ``refused`` collects
    ``(epoch, reason)`` of the plans this config refuses, as its workers refuse them (plans
    made for other models: a rolling restart under way, or a config edited since).
    ``foreign`` collects ``{pipeline: newest record's time}`` of records another pipeline
    wrote (one sharing this ``topics.prefix``), skipped as the workers skip them."""
    from kafka import KafkaConsumer, TopicPartition

    state = ControlState(config.model_names, config.links.probe_every)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers(bootstrap),
        enable_auto_commit=False,
        **config.consumer_kwargs(),
    )
    signer = Signer.from_env() if signer is None else signer
    messages: list[ControlMessage] = []
    try:
        tp = TopicPartition(config.topics.names().control, 0)
        if not consumer.partitions_for_topic(tp.topic):
            return state, messages
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + timeout
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=200).get(tp, []):
                try:  # workers skip them too; the caller may want to say how many
                    signer.verify(tp.topic, record.key, record.value, record.headers)
                except SignatureError:
                    if unverified is not None:
                        unverified.append(record.offset)
                    continue
                if writer := other_writer(record.headers, config.name):  # workers skip them too
                    if foreign is not None:
                        foreign[writer] = max(foreign.get(writer, 0.0), record.timestamp / 1000)
                    continue
                with contextlib.suppress(DecodeError, ValueError):  # workers skip them too
                    message = decode_record(record.value, ControlMessage)
                    outcome = state.apply(message)
                    if not outcome.rejected:
                        messages.append(message)
                    elif refused is not None and message.kind == "active_set":
                        refused.append((message.epoch, outcome.reason or "refused"))
    finally:
        consumer.close()
    return state, messages


@contextlib.contextmanager
def broker_for(config: PipelineConfig) -> Iterator[tuple[PipelineConfig, EmbeddedBroker | None]]:
    """The config's broker, or an embedded Tansu started for the duration when it has none."""
    if config.broker:
        yield config, None
        return
    with EmbeddedBroker() as embedded:
        log.info("started embedded broker at %s", embedded.bootstrap)
        yield with_broker(config, embedded.bootstrap), embedded


@dataclass(slots=True)
class RunReport:
    """What a pipeline run did, measured from its results."""

    frames: int
    results: dict[str, FrameResult]
    received_at: dict[str, float]
    seconds: float
    duplicates: int = 0  # repeated results of the frames this run sent
    workers_ready_s: list[float] = field(default_factory=list)
    worker_restarts: int = 0
    control: list[ControlMessage] = field(default_factory=list)  # the control log at the end
    started_at: float | None = None  # wall clock before the workers started (this run's messages)
    interrupted: int | None = None  # the exit code of a signal that cut the run short
    agent_crashes: dict[str, int] = field(default_factory=dict)  # {agent: crashes}, all workers

    def status_counts(self) -> Counter[tuple[str, str]]:
        return Counter((r.model, r.status) for res in self.results.values() for r in res.results)

    def latency_ms(self) -> dict[str, float]:
        """Frame capture (its timestamp) to result received, per frame id."""
        return {
            f: (self.received_at[f] - r.timestamp) * 1000
            for f, r in self.results.items()
            if r.timestamp is not None and f in self.received_at
        }


def require_sendable_source(config: PipelineConfig) -> None:
    """``mlink run`` sends the source itself; a ``topic`` source has nothing to send."""
    if config.source.topic:
        raise ConfigError(
            f"source.topic {config.source.topic!r}: the frames come from Kafka, so there is "
            "nothing for `mlink run` to send; start workers with `mlink worker CONFIG` (one per "
            "process or machine) and read results with `mlink tail CONFIG`"
        )


def _send_and_collect(
    cfg: PipelineConfig,
    frames: list[tuple[str, Any]],
    collector: ResultCollector,
    ids: list[str],
    timeout: float,
    progress: bool,
) -> tuple[bool, int | None]:
    """Send ``frames`` (their ids into ``ids``) and wait for their results: whether all came,
    and the exit code of a Ctrl-C or SIGTERM (the CLI's handler) that cut it short, so that a
    run stopped by ``timeout`` or a container stop still says what it did so far."""
    from tqdm import tqdm

    from mlink.deploy.source import FrameProducer, send_all

    try:
        with FrameProducer.for_pipeline(cfg, cfg.broker) as producer:
            send_all(producer, frames, cfg.source.rate, lambda f: ids.append(f.frame_id))
        with tqdm(total=len(ids), desc="results", unit="frame", disable=not progress) as bar:
            return collector.wait_for(set(ids), timeout, bar), None
    except (KeyboardInterrupt, SystemExit) as stop:
        code = stop.code if isinstance(stop, SystemExit) else 130
        log.warning("interrupted after %d frames sent: summarising what came back", len(ids))
        return False, code if isinstance(code, int) else 1


def run_pipeline(
    config: PipelineConfig,
    config_path: Path,
    workers: int | None = None,
    timeout: float = 600.0,
    log_dir: Path | None = None,
    progress: bool = True,
    frames: list[tuple[str, Any]] | None = None,
) -> RunReport:
    """Run the whole pipeline once over the config's source and collect every frame's result.

    ``frames`` (``(stream_id, image)`` pairs) replaces reading the source, when the caller has
    them already.
    """
    from mlink.deploy.source import iter_source

    if frames is None:
        require_sendable_source(config)
    # the pid too: two runs of one config started in the same second shared a log directory
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = log_dir or Path(".mlink-runs") / f"{config.name}-{stamp}-{os.getpid()}"
    with broker_for(config) as (cfg, _):
        create_pipeline_topics(cfg)

        def make(slot: int, generation: int) -> WorkerProcess:
            name = f"worker-{slot}" + (f".{generation}" if generation else "")
            return WorkerProcess(config_path, cfg.broker, log_dir / f"{name}.log", name)

        began = time.time()
        supervisor = WorkerSupervisor(make, workers or cfg.runtime.workers)
        collector: ResultCollector | None = None
        try:  # the workers are stopped whatever fails from here, the collector's start too
            collector = ResultCollector(
                cfg.broker, cfg.topics.names().results, client=cfg.consumer_kwargs(), only_new=True
            )
            ready = supervisor.wait_ready()
            if frames is None:
                frames = list(iter_source(cfg.source))
            start = time.time()
            ids: list[str] = []
            sent = _send_and_collect(cfg, frames, collector, ids, timeout, progress)
            complete, interrupted = sent
            if not complete and interrupted is None:
                missing = len(set(ids) - collector.results.keys())
                log.error(
                    "%d of %d frames have no result after %.0f s; worker logs in %s",
                    missing,
                    len(ids),
                    timeout,
                    log_dir,
                )
            seconds = max(collector.received_at.values(), default=start) - start
            try:  # the plans and probe reports the run's forecasts are checked against
                control = read_control(cfg.broker, cfg)[1]
            except Exception:
                log.exception("could not read the control log; the summary has no forecasts")
                control = []
            return RunReport(
                len(ids),
                dict(collector.results),
                dict(collector.received_at),
                seconds,
                collector.duplicates_of(ids),
                ready,
                supervisor.restarts,
                control,
                began,
                interrupted,
                agent_crashes_in(log_dir.glob("*.health.json")),
            )
        finally:
            if collector is not None:
                collector.close()
            supervisor.stop()
