"""Running a pipeline: worker processes, results, control commands, status. The Python API
behind ``mlink run / worker / tail / status / budget``.

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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.config import ConfigError, PipelineConfig, with_broker
from mlink.deploy.processes import WorkerProcess
from mlink.deploy.supervisor import WorkerSupervisor
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.linkstore.store import LinkStore
from mlink.operators.state import ControlState
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.records import ControlMessage, DecodeError, FrameResult
from mlink.topics.signing import Signer

log = logging.getLogger("mlink.runner")


class ResultCollector:
    """Reads the results topic in a background thread, keeping the first result per frame."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str | None = None,
        client: Mapping[str, Any] | None = None,
    ) -> None:
        from kafka import KafkaConsumer

        self.results: dict[str, FrameResult] = {}
        self.received_at: dict[str, float] = {}
        self.duplicates = 0
        self.duplicate_ids: Counter[str] = Counter()
        self.undecodable = 0
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap.split(","),
            group_id=group or f"mlink-collector-{os.getpid()}-{time.time_ns()}",
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            enable_auto_commit=True,
            **dict(client or {}),
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


def publish_control(bootstrap: str, config: PipelineConfig, message: ControlMessage) -> None:
    """Send one control message (e.g. a budget command) and wait until the broker has it."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","), acks="all", **config.producer_kwargs()
    )
    try:
        key, value, topic = (
            message.kind.encode(),
            encode_record(message),
            config.topics.names().control,
        )
        headers = Signer.from_env().sign(topic, key, value)
        producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(30)
    finally:
        producer.close()


def set_budget(bootstrap: str, config: PipelineConfig, budget: dict[str, float]) -> None:
    """Ask the running controller for a new budget; workers switch at the next epoch."""
    if not budget:
        raise ValueError("give at least one of ms, memory_mb, fraction")
    message = ControlMessage(kind="budget", epoch=0, issued_at=time.time(), budget=budget)
    publish_control(bootstrap, config, message)


def read_control(
    bootstrap: str, config: PipelineConfig, timeout: float = 5.0
) -> tuple[ControlState, list[ControlMessage]]:
    """Replay the control topic, as a worker does; return the state and every message."""
    from kafka import KafkaConsumer, TopicPartition

    state = ControlState(config.model_names, config.links.probe_every)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        enable_auto_commit=False,
        **config.consumer_kwargs(),
    )
    signer = Signer.from_env()
    messages: list[ControlMessage] = []
    try:
        tp = TopicPartition(config.topics.names().control, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + timeout
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=200).get(tp, []):
                with contextlib.suppress(DecodeError, ValueError):  # workers skip them too
                    signer.verify(tp.topic, record.key, record.value, record.headers)
                    message = decode_record(record.value, ControlMessage)
                    if not state.apply(message).rejected:
                        messages.append(message)
    finally:
        consumer.close()
    return state, messages


def status(bootstrap: str, config: PipelineConfig) -> dict[str, Any]:
    """Active set, epoch, budget, link versions, consumer lag, and agreement: predicted per
    model by the controller and measured live on probe frames, each also as the mean over the
    synthesized models only (the all-models figure counts executed models as 1)."""
    state, messages = read_control(bootstrap, config)
    last = next((m for m in reversed(messages) if m.kind == "active_set"), None)
    predicted = (last.extra.get("predicted") or {}) if last else {}
    return {
        "epoch": state.epoch,
        "active": list(state.active) or "all (warming up)",
        "link_version": state.link_version,
        "budget": state.budget or state.requested_budget,
        "predicted_accuracy": last.extra.get("objective") if last else None,
        "predicted_agreement": last.extra.get("predicted") if last else None,
        "predicted_lower": last.extra.get("lower") if last else None,  # stream plans only
        "predicted_synthesized_mean": _mean_of(
            (last.extra.get("predicted_synthesized") or {}).values()
            if last and state.schedule is not None
            else (v for m, v in predicted.items() if m not in state.active)
        ),
        "schedule": last.extra.get("plan") if last and state.schedule is not None else None,
        "replan_reason": last.extra.get("replan_reason") if last else None,
        "live_agreement": state.live_agreement,
        "live_synthesized_mean": _mean_of(state.live_agreement.values()),
        "live_probes": state.live_probes,
        "live_counts": state.live_counts,  # effective probes per model (stream synthesis)
        "plan_cost": last.extra.get("cost") if last else None,
        "cost_table": last.extra.get("cost_table") if last else None,
        "infeasible": last.extra.get("infeasible") if last else None,
        "linkstore": store_report(config.links.store),
        "lag": consumer_lag(bootstrap, config),
    }


def store_report(root: str) -> dict[str, Any]:
    """The link store's current version and versions. A local store that does not exist is
    reported as missing and not created: a status read from another directory than the
    workers' (a relative ``links.store`` resolves against the current one) must not leave an
    empty store behind or look like a pipeline without links."""
    local = Path(str(root).removeprefix("file://"))
    if "://" not in str(root).removeprefix("file://") and not local.is_dir():
        return {"root": str(local.absolute()), "current": None, "versions": [], "missing": True}
    store = LinkStore(root)
    versions = []
    for v in store.versions():
        links = v.meta.get("links", [])
        mean = sum(x["val_score"] for x in links) / len(links) if links else None
        versions.append(
            {
                "version": v.version,
                "created_at": v.created_at,
                "links": len(links),
                "mean_val_score": mean,
                "samples": v.meta.get("n_samples"),
            }
        )
    return {"root": str(store.root), "current": store.current(), "versions": versions}


def _mean_of(values: Any) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def consumer_lag(bootstrap: str, config: PipelineConfig) -> dict[str, int]:
    """Messages not yet consumed by the pipeline's group, per input topic."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    names = config.topics.names()
    client = config.client_kwargs()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), **client)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), **client)
    try:
        if hasattr(admin, "list_group_offsets"):  # kafka-python 3
            committed = admin.list_group_offsets(config.name).get(config.name, {})
        else:  # kafka-python 2
            committed = admin.list_consumer_group_offsets(config.name)
        lag: dict[str, int] = {}
        for topic in (config.source.topic or names.frames, names.samples):
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            ends = consumer.end_offsets(tps) if tps else {}
            lag[topic] = sum(
                max(0, ends[tp] - (committed[tp].offset if tp in committed else 0)) for tp in tps
            )
        return lag
    except Exception as exc:  # lag is advisory: a broker without group APIs must not break status
        log.warning("consumer lag unavailable: %s", exc)
        return {}
    finally:
        consumer.close()
        admin.close()


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
    duplicates: int = 0
    workers_ready_s: list[float] = field(default_factory=list)
    worker_restarts: int = 0

    def status_counts(self) -> Counter[tuple[str, str]]:
        return Counter((r.model, r.status) for res in self.results.values() for r in res.results)

    def latencies_ms(self) -> list[float]:
        """Frame capture (its timestamp) to result received, per frame, sorted."""
        return sorted(
            (self.received_at[f] - r.timestamp) * 1000
            for f, r in self.results.items()
            if r.timestamp is not None and f in self.received_at
        )


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
    from tqdm import tqdm

    from mlink.deploy.source import FrameProducer, _send_all, iter_source

    if config.source.topic and frames is None:
        raise ConfigError(
            f"source.topic {config.source.topic!r}: the frames come from Kafka, so there is "
            "nothing for `mlink run` to send; start workers with `mlink worker CONFIG` (one per "
            "process or machine) and read results with `mlink tail CONFIG`"
        )
    log_dir = log_dir or Path(".mlink-runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with broker_for(config) as (cfg, _):
        create_pipeline_topics(cfg)

        def make(slot: int, generation: int) -> WorkerProcess:
            name = f"worker-{slot}" + (f".{generation}" if generation else "")
            return WorkerProcess(config_path, cfg.broker, log_dir / f"{name}.log", name)

        supervisor = WorkerSupervisor(make, workers or cfg.runtime.workers)
        collector = ResultCollector(
            cfg.broker, cfg.topics.names().results, client=cfg.consumer_kwargs()
        )
        try:
            ready = supervisor.wait_ready()
            if frames is None:
                frames = list(iter_source(cfg.source))
            start = time.time()
            with FrameProducer(
                cfg.broker,
                cfg.topics.names().frames,
                encoding=cfg.source.encoding,
                jpeg_quality=cfg.source.jpeg_quality,
                max_bytes=cfg.limits.limits().max_frame_data_bytes,
                **cfg.producer_kwargs(),
            ) as producer:
                ids = _send_all(producer, frames, cfg.source.rate)
            with tqdm(total=len(ids), desc="results", unit="frame", disable=not progress) as bar:
                complete = collector.wait_for(set(ids), timeout, bar)
            if not complete:
                missing = len(set(ids) - collector.results.keys())
                log.error(
                    "%d of %d frames have no result after %.0f s; worker logs in %s",
                    missing,
                    len(ids),
                    timeout,
                    log_dir,
                )
            seconds = max(collector.received_at.values(), default=start) - start
            return RunReport(
                len(ids),
                dict(collector.results),
                dict(collector.received_at),
                seconds,
                collector.duplicates,
                ready,
                supervisor.restarts,
            )
        finally:
            collector.close()
            supervisor.stop()
