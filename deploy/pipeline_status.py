"""What ``mlink status`` reads from a running pipeline: the control log's plan and live
agreement, the link store, consumer lag and the dead letters. :mod:`mlink.deploy.status_view`
lays it out for people; ``mlink status --json`` prints it as it is.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from mlink.deploy.config import PipelineConfig
from mlink.deploy.group_members import group_members
from mlink.deploy.link_pins import link_rows
from mlink.deploy.model_failures import failure_report
from mlink.deploy.runner import read_control
from mlink.linkstore.linkset import specs_from_meta
from mlink.linkstore.store import LinkStore
from mlink.linkstore.store_files import local_store_path
from mlink.linkstore.store_reads import BundleMeta
from mlink.operators.content_tally import ContentTally
from mlink.operators.relearn import model_set_change, model_set_id
from mlink.operators.state import ControlState
from mlink.operators.stream_decision import (
    forecast_bounds,
    model_shares,
    plan_estimate,
    plan_promise,
    state_forecast,
)
from mlink.topics.bootstrap import bootstrap_servers
from mlink.topics.codec import decode_record
from mlink.topics.pipeline_header import other_writer
from mlink.topics.records import DeadLetter, DecodeError, FrameResult
from mlink.topics.specs import OutputSpec, SpecError

__all__ = [
    "consumer_lag",
    "content_report",
    "dead_letter_report",
    "newer_refused",
    "read_to_end",
    "recent_results",
    "status",
    "store_report",
    "trained_for_other_models",
]

log = logging.getLogger("mlink.status")
RECENT_DEAD_LETTERS = 5
RECENT_RESULTS = 2000  # the content-weighted forecast weighs at most this many latest results
READ_FOR_S = 5.0  # at most this long reading a topic that a busy pipeline keeps writing


def status(bootstrap: str, config: PipelineConfig) -> dict[str, Any]:
    """Active set, epoch, budget, link versions, consumer lag, and agreement: predicted per
    model by the controller and measured live on probe frames, each also as the mean over the
    synthesized models only (the all-models figure counts executed models as 1)."""
    unverified: list[int] = []
    refused: list[tuple[int, str]] = []
    foreign: dict[str, float] = {}
    state, messages = read_control(
        bootstrap, config, unverified=unverified, refused=refused, foreign=foreign
    )
    results = recent_results(bootstrap, config)
    started = bool(messages or unverified) or control_topic_exists(bootstrap, config)
    # the plan in force, as the workers applied it (a later message of the same epoch, from a
    # controller that failed over, was skipped by them and is not shown either)
    extra = state.plan_extra if state.epoch > 0 else {}
    predicted = model_shares(extra.get("predicted"))
    # on synthesized frames only, the basis the probes measure: the paper's links synthesize a
    # model on every frame it does not run, so there it is the model's prediction itself
    predicted_synth = (
        model_shares(extra.get("predicted_synthesized"))
        if state.schedule is not None
        else {m: v for m, v in predicted.items() if m not in state.active}
    )
    return {
        "epoch": state.epoch,
        "models": sorted(config.model_names),
        "active": list(state.active) or "all (warming up)",
        "link_version": state.link_version,
        "latest_links": state.latest_links,
        "latest_quick": state.latest_quick,  # the quick first links: the full ones follow
        "pinned_links": state.pinned_links,  # mlink links --pin: planned from until unpinned
        "pin_ended": state.pin_ended,  # the controller ended a pin the store lost
        "budget": state.budget or state.requested_budget,
        # a budget set with `mlink budget` stays in force over an edited config's
        "budget_set_by": (
            "mlink budget" if state.requested_budget and not state.budget_from_config else "config"
        ),
        "predicted_accuracy": plan_estimate(extra),
        "predicted_agreement": predicted or None,
        "predicted_lower": model_shares(extra.get("lower")) or None,  # stream plans only
        "predicted_forecast": model_shares(forecast_bounds(extra)) or None,  # stream plans
        "predicted_promise": plan_promise(extra),  # their mean, all models
        "predicted_synthesized": predicted_synth,
        "predicted_synthesized_mean": _mean_of(predicted_synth.values()),
        "schedule": (
            {m: state.schedule.describe(m) for m in state.schedule.models}
            if state.schedule is not None
            else None
        ),
        "replan_reason": extra.get("replan_reason"),
        "live_agreement": state.live_agreement,
        "live_synthesized_mean": _mean_of(state.live_agreement.values()),
        "live_probes": state.live_probes,
        "live_counts": state.live_counts,  # effective probes per model (stream synthesis)
        # stream plans: the plan's forecast bound until probes come in, then its estimate with
        # each synthesized model rescaled by what its probes saw (liveguard.forecast)
        "forecast_with_probes": state_forecast(state),
        "plan_cost": extra.get("cost"),
        "cost_table": extra.get("cost_table"),
        "model_ms": extra.get("model_ms"),  # what the plan was priced on
        "budget_ms": extra.get("budget_ms"),
        # the plan would switch if model costs rose a little (linkstore.cost_headroom)
        "fragile": extra.get("fragile"),
        "infeasible": extra.get("infeasible"),
        "budget_refused": state.budget_refused,  # the last request no plan met, and why
        # records MLINK_SIGNING_KEY does not verify: skipped by every worker too
        "unverified_control": len(unverified),
        # named when it does not exist: no worker started, or a wrong topics.prefix
        "control_topic": None if started else config.topics.names().control,
        "linkstore": store_report(config.links.store, state, config.specs()),
        "lag": consumer_lag(bootstrap, config),
        # the consumer group's members now: one per live worker (one that keeps dying is gone),
        # and how many run this config's models (`model_set`) or others'
        "workers": group_members(bootstrap, config),
        "model_set": model_set_id(config.specs()),
        # plans newer than the one in force that this config refuses: the controller's worker
        # runs other models (a rolling restart); this config's workers run every model
        "refused_plans": newer_refused(refused, state.epoch),
        "dead_letters": dead_letter_report(bootstrap, config),
        # the paper's links: the plan's estimate re-weighted to what its active detectors found
        # in the latest results (each worker exports the same for its own frames)
        "content_forecast": content_report(state, results),
        # which models failed on the latest frames, and why (a warm-up that cannot end)
        "model_failures": failure_report(results),
        # other pipelines whose records are on this pipeline's topics (one topics.prefix)
        "other_pipelines": foreign or None,
    }


def store_report(
    root: str,
    state: ControlState | None = None,
    specs: Mapping[str, OutputSpec] | None = None,
) -> dict[str, Any]:
    """The link store's current version and versions. A local store that does not exist is
    reported as missing and not created: a status read from another directory than the
    workers' (a relative ``links.store`` resolves against the current one) must not leave an
    empty store behind or look like a pipeline without links. With ``specs`` (the config's
    models), ``in_force_for_other_models`` says how the models the version in force was
    trained for differ from them: this config's workers run every model on its plan's frames
    (a rolling restart onto a config with a model added: the plan looked in force). With a
    version in force, ``in_force_missing`` says whether the store lacks it."""
    local = local_store_path(root)
    if local is not None and not local.is_dir():
        return {"root": str(local.absolute()), "current": None, "versions": [], "missing": True}
    store = LinkStore(root)
    state = state or ControlState(())
    metas = store.versions()  # once: the rows and the models of the version in force
    versions = [
        {
            "version": row.version,
            "created_at": row.created_at,
            "links": row.links,
            "mean_val_score": row.mean_val_score,
            "samples": row.samples,
        }
        for row in link_rows(state, store, metas)
    ]
    report = {"root": str(store.root), "current": store.current(), "versions": versions}
    if state.link_version is not None:
        # pruned by a trainer on another config, or lost: a worker that has not loaded it runs
        # every model, and status showed its plan's synthesized models as if they ran
        report["in_force_missing"] = all(m.version != state.link_version for m in metas)
    if specs is not None and state.link_version is not None:
        report["in_force_for_other_models"] = trained_for_other_models(
            metas, state.link_version, specs
        )
    return report


def trained_for_other_models(
    metas: Sequence[BundleMeta], version: int, specs: Mapping[str, OutputSpec]
) -> str | None:
    """How the models ``version`` was trained for differ from ``specs``
    (:func:`~mlink.operators.relearn.model_set_change`), from the store's ``metas``
    (:meth:`~mlink.linkstore.store.LinkStore.versions`); None when they match, or when the
    store does not say (the version is gone, or its metadata names no models)."""
    for meta in metas:
        if meta.version == version and isinstance(meta.meta.get("models"), dict):
            try:
                return model_set_change(specs_from_meta(meta.meta), specs)
            except (SpecError, TypeError, ValueError):
                return None
    return None


def _mean_of(values: Any) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def read_to_end(
    consumer: Any, tps: list[Any], back: int, keep: int = 0
) -> tuple[dict[Any, int], dict[Any, int], list[Any]]:
    """Each partition's first offset and real end, read from ``back`` records before the end
    the broker reports, and the last ``keep`` records read. Reading is what finds the real end:
    Tansu reports the end of a multi-record batch as its first offset plus one (docs/broker.md),
    and the pipeline writes in batches. Bounded by ``READ_FOR_S`` on a topic that keeps
    growing, and by ``keep`` in memory."""
    begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(begins[tp], ends[tp] - back))
    records: deque[Any] = deque(maxlen=max(keep, 0))
    deadline = time.monotonic() + READ_FOR_S
    while time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=500)
        if not batches:
            break
        for tp, batch in batches.items():
            ends[tp] = max(ends[tp], batch[-1].offset + 1)
            records.extend(batch[-keep:] if keep else ())
    return begins, ends, list(records)


def _reader(bootstrap: str, config: PipelineConfig) -> Any:
    """A consumer outside the pipeline's group that commits nothing: status only looks."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap_servers(bootstrap),
        enable_auto_commit=False,
        **config.consumer_kwargs(),
    )


def control_topic_exists(bootstrap: str, config: PipelineConfig) -> bool:
    """Whether the pipeline's control topic exists (asked without creating it): a status of a
    pipeline no worker has started, or of a mistyped ``topics.prefix``, otherwise reads as a
    pipeline warming up."""
    consumer = _reader(bootstrap, config)
    try:
        return bool(consumer.partitions_for_topic(config.topics.names().control))
    finally:
        consumer.close()


def consumer_lag(bootstrap: str, config: PipelineConfig) -> dict[str, int]:
    """Messages not yet consumed by the pipeline's group, per input topic (to each partition's
    real end: :func:`read_to_end`)."""
    from kafka import KafkaAdminClient, TopicPartition

    names = config.topics.names()
    client = config.client_kwargs()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(bootstrap), **client)
    consumer = _reader(bootstrap, config)
    try:
        if hasattr(admin, "list_group_offsets"):  # kafka-python 3
            committed = admin.list_group_offsets(config.name).get(config.name, {})
        else:  # kafka-python 2
            committed = admin.list_consumer_group_offsets(config.name)
        lag: dict[str, int] = {}
        for topic in (config.source.topic or names.frames, names.samples):
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            _, ends, _ = read_to_end(consumer, tps, back=1) if tps else ({}, {}, [])
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


def newer_refused(refused: list[tuple[int, str]], epoch: int) -> dict[str, Any] | None:
    """The newest of ``refused`` plans when it is newer than the plan in force (``epoch``):
    ``{"epoch", "count", "reason"}``; None when the plan in force is the newest this config
    heard (plans refused before it are history: a config edited and relearned since)."""
    newer = [(e, why) for e, why in refused if e > epoch]
    if not newer:
        return None
    newest, why = max(newer, key=lambda item: item[0])
    return {"epoch": newest, "count": len(newer), "reason": why}


def recent_results(
    bootstrap: str, config: PipelineConfig, recent: int = RECENT_RESULTS
) -> list[FrameResult]:
    """The latest ``recent`` results this pipeline wrote (not another's on a shared prefix)."""
    from kafka import TopicPartition

    topic = config.topics.names().results
    consumer = _reader(bootstrap, config)
    results: list[FrameResult] = []
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        back = recent // max(len(tps), 1) + 1
        _, _, records = read_to_end(consumer, tps, back=back, keep=recent) if tps else ({}, {}, [])
        for record in records:
            if other_writer(record.headers, config.name):
                continue
            with contextlib.suppress(DecodeError):
                results.append(decode_record(record.value, FrameResult))
    except Exception as exc:  # advisory, like the lag: a status must not fail on it
        log.warning("latest results unavailable: %s", exc)
    finally:
        consumer.close()
    return results


def content_report(state: ControlState, results: Sequence[FrameResult]) -> dict[str, Any] | None:
    """The plan's content-weighted forecast (docs/content-forecast.md) over the latest results
    planned under it, or None for a plan without a content table (stream plans, warm-up).
    A plan's estimate comes from the warm-up; these results say what the active detectors have
    found since, so this is the figure to hold a paper-link plan to."""
    if state.content is None:
        return None
    tally = ContentTally()
    tally.plan(state.content, state.epoch)
    for result in results:
        tally.add(result)
    forecast = tally.forecast()
    assert forecast is not None  # the tally has the plan's table
    return {
        "value": forecast.value,
        "unseen": forecast.unseen,
        "floor": forecast.floor,
        "results": int(tally.counts.sum()),
        "epoch": state.epoch,
    }


def dead_letter_report(
    bootstrap: str, config: PipelineConfig, recent: int = RECENT_DEAD_LETTERS
) -> dict[str, Any]:
    """How many dead letters the topic holds, and the stage and reason of the last few: what
    an operator asks first when frames come back degraded. Counted to the real end
    (:func:`read_to_end`): a burst of 15 poison records read as 10 from the end offset alone."""
    from kafka import TopicPartition

    topic = config.topics.names().dead_letter
    consumer = _reader(bootstrap, config)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return {"topic": topic, "count": 0, "recent": []}
        begins, ends, records = read_to_end(consumer, tps, back=recent, keep=recent)
        letters: deque[DeadLetter] = deque(maxlen=recent)
        for record in records:
            with contextlib.suppress(DecodeError):
                letters.append(decode_record(record.value, DeadLetter))
        return {
            "topic": topic,
            "count": sum(ends[tp] - begins[tp] for tp in tps),
            "recent": [
                {"at": d.at, "stage": d.stage, "reason": d.reason}
                for d in sorted(letters, key=lambda d: d.at)
            ],
        }
    except Exception as exc:  # advisory, like the lag: a status must not fail on it
        log.warning("dead letters unavailable: %s", exc)
        return {"topic": topic, "count": None, "recent": []}
    finally:
        consumer.close()


def why_no_plan(bootstrap: str, config: PipelineConfig, since: float) -> str:
    """Why a budget sent at ``since`` (epoch seconds) has no plan yet, as far as the broker
    shows: no worker, a controller that failed on it, or a warm-up still under way. `mlink
    budget` said "once a worker runs and the first links are trained" while one ran with links
    and its controller had dead-lettered the request (a helper's audit)."""
    letters = dead_letter_report(bootstrap, config).get("recent") or []
    failed = [d for d in letters if d.get("stage") == "controller" and d.get("at", 0) >= since]
    if failed:
        return f"the controller failed on it: {failed[-1]['reason']} (`mlink status`)"
    members = group_members(bootstrap, config)
    if members is not None and not members.get("workers"):
        return "no worker of this pipeline is running: the controller plans it once one does"
    state, _ = read_control(bootstrap, config)
    if state.warming_up:
        return "the pipeline is in its warm-up: it is planned once the links are trained"
    return "the controller has not answered yet (`mlink status` shows the plan in force)"
