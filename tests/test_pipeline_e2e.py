"""The whole pipeline end to end: real faust worker processes on the session's Tansu broker.

No mocks: frames go onto the frames topic, ``mlink.deploy.worker_app`` workers plan them, run
real digits models (scikit-learn), train links, switch active sets and synthesize, and the tests
read what the workers wrote on the results, control and dead-letter topics.

- ``digits_run`` (module scope) runs one pipeline through warm-up, the first active set and two
  budget changes; the three tests after it check exactly-once results and executed == active,
  synthesized == offline synthesis, and the budget moving the active set, on that one run.
- the dead-letter test and the two-worker failover test run their own pipelines.

Timings on the 2-core dev machine: 13-25 s for the shared run, 11-17 s for the dead-letter test,
~33 s for failover (a SIGKILLed worker's partitions move ~16 s after the kill); 70-95 s in all.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2
from rich.console import Console
from typer.testing import CliRunner

from mlink.deploy.cli import app as cli_app
from mlink.deploy.config import PipelineConfig, load_config
from mlink.deploy.group_members import group_members
from mlink.deploy.pipeline_status import status
from mlink.deploy.runner import ResultCollector, read_control, set_budget
from mlink.deploy.source import FrameProducer
from mlink.deploy.status_exporter import look
from mlink.deploy.status_view import render_status
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.eval.workloads import digits
from mlink.linkstore.bundle import load_bundle
from mlink.linkstore.content_forecast import ContentTable
from mlink.linkstore.store import LinkStore
from mlink.operators.controller import decide
from mlink.operators.relearn import model_set_id
from mlink.topics.codec import decode_record, encode, encode_record
from mlink.topics.frames import encode_frame
from mlink.topics.records import (
    ControlMessage,
    DeadLetter,
    Frame,
    FrameResult,
)
from tests.conftest import FaustWorker

pytestmark = pytest.mark.broker

APP = "mlink.deploy.worker_app"
DIGIT_MODEL = "mlink.eval.workloads.digits:model"
# Declared costs (they win over measured ones) make the controller's choices predictable: with a
# budget fraction of 0.2 (16.4 of 82 ms) or 0.1 only parity_logreg (plus its links, well under
# 1 ms each) fits, so the active set is {parity_logreg}; 0.9 (73.8 ms) admits three models, and
# the optimum then runs more than parity_logreg alone, which cannot synthesize a digit.
COSTS = {"digit_svc": 40.0, "ge5_forest": 20.0, "parity_logreg": 2.0, "value_gbr": 20.0}
FAST_MODELS = ("ge5_forest", "parity_logreg", "value_gbr")  # each fits in < 2 s at start-up
IMAGES = list(digits.frames(200))
PROBE_EVERY = 10


# -- helpers ----------------------------------------------------------------------------------


def write_config(
    directory: Path,
    tag: str,
    models: tuple[str, ...],
    *,
    partitions: int,
    warmup_frames: int,
    output_timeout_s: float,
    fraction: float = 0.3,
    links: dict[str, Any] | None = None,
    extra_models: list[dict[str, Any]] | None = None,
    runtime: dict[str, Any] | None = None,
) -> tuple[Path, PipelineConfig]:
    """A small digits pipeline config with a unique name and topic prefix, in ``directory``
    (``links``, ``runtime``: more settings of theirs; ``extra_models``: more model entries, as
    written)."""
    uid = uuid.uuid4().hex[:8]
    data = {
        "name": f"e2e-{tag}-{uid}",
        "source": {"factory": "mlink.eval.workloads.digits:frames"},
        "models": [
            {
                "name": m,
                "factory": DIGIT_MODEL,
                "args": {"name": m},
                "output": digits.MODELS[m].spec.to_dict(),
                "batch": True,
                "cost": {"ms": COSTS[m]},
            }
            for m in models
        ]
        + list(extra_models or ()),
        "budget": {"fraction": fraction},
        "links": {
            "store": str(directory / "links"),
            "warmup_frames": warmup_frames,
            "probe_every": PROBE_EVERY,
            "epochs": 20,
            **(links or {}),
        },
        "topics": {"prefix": f"e2e.{tag}.{uid}", "partitions": partitions},
        "runtime": {"output_timeout_s": output_timeout_s, **(runtime or {})},
    }
    path = directory / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_config(path)


def worker_env(config_path: Path, bootstrap: str, datadir: Path) -> dict[str, str]:
    # F_DATADIR keeps faust's "<app id>-data" directory out of the working tree.
    return {"MLINK_CONFIG": str(config_path), "MLINK_BROKER": bootstrap, "F_DATADIR": str(datadir)}


def one_worker(
    bootstrap: str, config_path: Path, config: PipelineConfig, tmp_path: Path
) -> tuple[FaustWorker, ResultCollector]:
    """The pipeline's topics, one worker on them (not yet started: ``wait_ready()``) and a
    collector of its results (close it, and stop the worker, when done)."""
    create_pipeline_topics(config, bootstrap)
    env = worker_env(config_path, bootstrap, tmp_path / "faust")
    worker = FaustWorker(APP, env, tmp_path / "w.log", "w0")
    return worker, ResultCollector(bootstrap, config.topics.names().results)


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[Any]:
    """Every record of ``topic`` up to its current end offsets, without a consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        while time.monotonic() < deadline and any(consumer.position(tp) < end[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def dead_letters(bootstrap: str, config: PipelineConfig) -> list[DeadLetter]:
    topic = config.topics.names().dead_letter
    return [decode_record(r.value, DeadLetter) for r in read_topic(bootstrap, topic)]


def wait_until(what: str, check: Callable[[], bool], timeout: float, worker: FaustWorker) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker {worker.name} died waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s; log tail:\n{worker.log_tail()}")
        time.sleep(0.1)


def wait_for_epoch(worker: FaustWorker, epoch: int, timeout: float = 60.0) -> None:
    """Until the worker's planner state is at ``epoch``: frames sent later are planned under it."""
    wait_until(f"epoch {epoch}", lambda: f"now at epoch {epoch}:" in worker.log(), timeout, worker)


def wait_results(
    collector: ResultCollector, ids: set[str], timeout: float, workers: list[FaustWorker]
) -> None:
    if not collector.wait_for(ids, timeout):
        missing = sorted(ids - collector.results.keys())
        tails = "\n".join(f"--- {w.name}:\n{w.log_tail(30)}" for w in workers)
        raise AssertionError(f"{len(missing)} frames without result: {missing[:20]}\n{tails}")


def send_frames(
    producer: FrameProducer, streams: list[str], seqs: range, offset: int = 0
) -> list[str]:
    ids = []
    for seq in seqs:
        for i, stream in enumerate(streams):
            image = IMAGES[(offset + seq * len(streams) + i) % len(IMAGES)]
            ids.append(producer.send(stream, seq, image).frame_id)
    producer.flush()
    return ids


def executed(result: FrameResult) -> tuple[str, ...]:
    return tuple(sorted(r.model for r in result.results if r.status == "executed"))


def active_sets(messages: list[ControlMessage]) -> dict[int, ControlMessage]:
    out: dict[int, ControlMessage] = {}
    for m in messages:
        if m.kind == "active_set":
            assert m.epoch not in out, f"two active sets for epoch {m.epoch}"
            out[m.epoch] = m
    return out


# -- one pipeline run shared by the first three tests ------------------------------------------


@dataclasses.dataclass
class DigitsRun:
    config: PipelineConfig
    workers: list[FaustWorker]
    phases: dict[str, list[str]]  # frame ids sent in each phase
    results: dict[str, FrameResult]
    duplicates: int
    control: list[ControlMessage]
    dead_letters: list[DeadLetter]
    seconds: float
    status: dict[str, Any]
    budget_said: str = ""  # what `mlink budget --fraction 0.1` printed

    @property
    def produced(self) -> list[str]:
        return [f for ids in self.phases.values() for f in ids]

    def expected_plan(self, epoch: int, seq: int) -> tuple[tuple[str, ...], bool]:
        """(active models, probe) for a frame, derived from the control topic alone."""
        models = tuple(sorted(self.config.model_names))
        if epoch == 0:
            return models, True
        probe = seq % PROBE_EVERY == 0
        return (models if probe else active_sets(self.control)[epoch].active), probe


@pytest.fixture(scope="module")
def _digits_run(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DigitsRun]:
    tmp = tmp_path_factory.mktemp("digits-run")
    models = ("digit_svc", *FAST_MODELS)
    path, config = write_config(
        tmp, "run", models, partitions=2, warmup_frames=32, output_timeout_s=5.0, fraction=0.2
    )
    names = config.topics.names()
    address = f" kafka://{broker.bootstrap} , "  # as users copy it; every client must read it
    create_pipeline_topics(config, address)
    started = time.monotonic()
    worker = FaustWorker(APP, worker_env(path, address, tmp / "faust"), tmp / "worker.log", "w0")
    collector = ResultCollector(address, names.results)
    streams = ["cam-a", "cam-b", "cam-c", "cam-d"]
    phases: dict[str, list[str]] = {}
    try:
        worker.wait_ready()
        with FrameProducer(address, names.frames) as producer:
            # warm-up: every frame is a probe running every model; links train after 32 of them
            phases["warmup"] = send_frames(producer, streams, range(0, 10))
            wait_for_epoch(worker, 1)
            phases["epoch1"] = send_frames(producer, streams, range(10, 25))
            wait_results(collector, set(phases["epoch1"]), 60, [worker])
            set_budget(address, config, {"fraction": 0.9})
            wait_for_epoch(worker, 2)
            phases["budget-0.9"] = send_frames(producer, streams, range(25, 35))
            wait_results(collector, set(phases["budget-0.9"]), 60, [worker])
            said = CliRunner().invoke(  # as an operator asks: it waits for the plan
                cli_app, ["budget", str(path), "--broker", broker.bootstrap, "--fraction", "0.1"]
            )
            assert said.exit_code == 0, said.output
            wait_for_epoch(worker, 3)
            phases["budget-0.1"] = send_frames(producer, streams, range(35, 45))
        all_ids = {f for ids in phases.values() for f in ids}
        wait_results(collector, all_ids, 60, [worker])
        time.sleep(1.0)  # let any duplicate result arrive before counting
        _, control = read_control(address, config)
        dead = dead_letters(broker.bootstrap, config)
        pipeline_status = status(address, config)  # `mlink status`, worker still up
        run = DigitsRun(
            config=config,
            workers=[worker],
            phases=phases,
            results=dict(collector.results),
            duplicates=collector.duplicates,
            control=control,
            dead_letters=dead,
            seconds=time.monotonic() - started,
            status=pipeline_status,
            budget_said=" ".join(said.output.split()),
        )
        print(
            f"\ndigits run: {len(all_ids)} frames in {run.seconds:.1f} s, "
            f"{run.duplicates} duplicate results, epochs "
            f"{ {e: m.active for e, m in active_sets(control).items()} }"
        )
        yield run
    finally:
        collector.close()
        worker.stop()


@pytest.fixture
def digits_run(_digits_run: DigitsRun, request: pytest.FixtureRequest) -> DigitsRun:
    request.node._faust_workers = _digits_run.workers  # logs in the report of a failed test
    return _digits_run


def test_every_frame_one_result_and_only_active_models_execute(digits_run: DigitsRun) -> None:
    run = digits_run
    models = tuple(sorted(run.config.model_names))
    produced = run.produced
    assert len(set(produced)) == len(produced)
    # exactly one result per frame: nothing lost, nothing extra, no duplicate on a clean run
    assert set(run.results) == set(produced)
    assert run.duplicates == 0, f"{run.duplicates} duplicate results"
    assert not run.dead_letters, [d.reason for d in run.dead_letters]
    assert not [f for f, r in run.results.items() if r.degraded]

    # every frame's plan is what the control topic implies for its epoch and sequence number
    sets = active_sets(run.control)
    after_links = 0
    for frame_id, result in run.results.items():
        expected_active, expected_probe = run.expected_plan(result.epoch, result.seq)
        assert result.probe == expected_probe, frame_id
        # executed models are exactly the plan's active set: inactive ones never ran
        assert executed(result) == expected_active, frame_id
        assert all(r.error is None for r in result.results), frame_id
        if result.epoch >= 1 and not result.probe:
            after_links += 1
            statuses = {r.model: r.status for r in result.results}
            assert {m for m, s in statuses.items() if s == "synthesized"} == set(models) - set(
                expected_active
            ), frame_id
            assert set(statuses.values()) == {"executed", "synthesized"}
            for r in result.results:
                if r.status == "synthesized":
                    assert r.link_version == sets[result.epoch].link_version
                    assert r.agreement is not None and 0.0 <= r.agreement <= 1.0
    assert after_links >= 80  # the three post-warm-up phases minus their probe frames
    assert sum(r.probe for r in run.results.values()) >= 40  # warm-up + probes


def test_status_reports_the_live_plan_links_and_lag(digits_run: DigitsRun) -> None:
    report = digits_run.status
    last = active_sets(digits_run.control)[3]
    assert report["epoch"] == 3, report
    assert report["active"] == list(last.active), (report, last)
    assert report["budget"] == {"fraction": 0.1}
    assert report["link_version"] == last.link_version, (report, last)
    store = report["linkstore"]
    assert store["current"] == last.link_version, store
    assert [v["version"] for v in store["versions"]] == [last.link_version], store
    assert 0.0 <= store["versions"][0]["mean_val_score"] <= 1.0
    names = digits_run.config.topics.names()
    assert set(report["lag"]) == {names.frames, names.samples}, report["lag"]
    assert all(lag >= 0 for lag in report["lag"].values()), report["lag"]
    assert report["dead_letters"]["count"] == len(digits_run.dead_letters) == 0, report
    # one live worker, the one member of the pipeline's consumer group
    assert report["workers"]["group"] == digits_run.config.name
    assert report["workers"]["workers"] == 1, report["workers"]
    # the plan's estimate weighed by what its results showed: classifiers, one signature
    content = report["content_forecast"]
    assert content["epoch"] == 3, content
    assert content["results"] >= len(digits_run.phases["budget-0.1"]) - 5, content
    estimate = np.mean(list(last.extra["predicted"].values()))
    assert content["value"] == pytest.approx(estimate, abs=1e-5), (content, last.extra)
    assert content["unseen"] == 0.0, content
    console = Console(width=100, record=True)  # what `mlink status` prints without --json
    render_status(report, console)
    text = console.export_text()
    assert f"epoch 3 · link version {last.link_version}" in text
    assert f"live workers: 1 (consumer group {digits_run.config.name}" in text
    assert all(m in text for m in digits_run.config.model_names)


def test_synthesized_outputs_equal_offline_synthesis(digits_run: DigitsRun) -> None:
    store = LinkStore(digits_run.config.links.store)
    checked = Counter()
    for frame_id, result in digits_run.results.items():
        real = {r.model: r.output for r in result.results if r.status == "executed"}
        for r in result.results:
            if r.status != "synthesized":
                continue
            assert r.link_version is not None
            linkset = load_bundle(store, r.link_version).linkset
            # the sources are every executed model that has a link into the target
            assert r.sources == tuple(s for s in linkset.sources_of(r.model) if s in real)
            offline = linkset.synthesize(r.model, {s: [real[s]] for s in r.sources})
            assert np.allclose(np.asarray(offline[0]), r.output, atol=1e-5), (frame_id, r.model)
            checked[r.model] += 1
    assert sum(checked.values()) >= 80, checked
    print(f"\nsynthesized outputs checked per model: {dict(checked)}")


def test_budget_change_moves_the_active_set(digits_run: DigitsRun) -> None:
    run = digits_run
    sets = active_sets(run.control)
    assert sorted(sets) == [1, 2, 3]
    budgets = [m.budget for m in run.control if m.kind == "budget"]
    assert budgets == [{"fraction": 0.9}, {"fraction": 0.1}]
    assert [sets[e].budget for e in (1, 2, 3)] == [
        {"fraction": 0.2},
        {"fraction": 0.9},
        {"fraction": 0.1},
    ]
    assert sets[1].active == ("parity_logreg",) == sets[3].active  # see COSTS
    assert len(sets[2].active) > 1
    # each active set is what the controller's pure logic decides offline for its budget
    assert sets[1].link_version is not None
    assert all(m.link_version == sets[1].link_version for m in sets.values())
    links = load_bundle(LinkStore(run.config.links.store), sets[1].link_version)
    for epoch, message in sets.items():
        config = run.config
        offline = decide(config.model_names, config.declared_costs(), links, message.budget, epoch)
        assert offline.active == message.active, epoch
        assert message.extra["cost"]["ms"] <= message.budget["fraction"] * sum(COSTS.values())
        # each plan carries what its synthesized models keep per content signature; these
        # classifiers are no detectors, so there is one signature and it is the estimate
        table = ContentTable.from_meta(message.extra["content"], config.model_names)
        assert table.detectors == () and table.seen[0]
        estimate = np.mean(list(message.extra["predicted"].values()))
        assert table.forecast([5, 0, 0, 0]).value == pytest.approx(estimate, abs=1e-5)
    for phase, epoch in (("epoch1", 1), ("budget-0.9", 2), ("budget-0.1", 3)):
        for frame_id in run.phases[phase]:
            result = run.results[frame_id]
            assert result.epoch == epoch, (phase, frame_id)
            probe = result.seq % PROBE_EVERY == 0
            want = tuple(sorted(run.config.model_names)) if probe else sets[epoch].active
            assert executed(result) == want, (phase, frame_id)


# -- dead letters -----------------------------------------------------------------------------


def test_bad_records_are_dead_lettered_while_the_stream_flows(
    broker: Any, faust_worker: Callable[..., FaustWorker], tmp_path: Path
) -> None:
    path, config = write_config(
        tmp_path, "dlq", FAST_MODELS, partitions=2, warmup_frames=1000, output_timeout_s=3.0
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    worker = faust_worker(APP, worker_env(path, broker.bootstrap, tmp_path / "faust"))
    collector = ResultCollector(broker.bootstrap, names.results)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        worker.wait_ready()
        good: list[str] = []

        def good_frame(seq: int) -> None:
            frame = encode_frame(IMAGES[seq], "good", seq)
            producer.send(names.frames, key=b"good", value=encode_record(frame)).get(10)
            good.append(frame.frame_id)

        def bad(topic: str, key: bytes, value: bytes) -> tuple[str, int, int, bytes]:
            meta = producer.send(topic, key=key, value=value).get(10)
            return meta.topic, meta.partition, meta.offset, value

        for seq in range(6):
            good_frame(seq)
        wait_results(collector, set(good), 60, [worker])  # good:0-5 are now completed

        bad_frame = {
            "v": 1,
            "type": "frame",
            "stream_id": "junk",
            "frame_id": "junk:1",
            "seq": 1,
            "timestamp": time.time(),
            "encoding": "raw",
            "data": bytes(64),
            "shape": [-8, 8],
        }
        not_an_image = Frame(
            stream_id="junk",
            frame_id="junk:2",
            seq=2,
            timestamp=time.time(),
            encoding="png",
            data=b"\x89PNG but not really",
            shape=(8, 8),
        )
        frames_t = names.frames
        sent: dict[str, tuple[str, int, int, bytes]] = {}
        good_frame(6)
        sent["garbage"] = bad(frames_t, b"junk", b"\xc1 is never valid msgpack")
        good_frame(7)
        sent["bad shape"] = bad(frames_t, b"junk", encode(bad_frame))
        good_frame(8)
        sent["not an image"] = bad(frames_t, b"junk", encode_record(not_an_image))
        for seq in range(9, 20):
            good_frame(seq)

        wait_results(collector, {*good, "junk:2"}, 60, [worker])
        deadline = time.monotonic() + 30
        while len(dead_letters(broker.bootstrap, config)) < len(sent):
            assert time.monotonic() < deadline, dead_letters(broker.bootstrap, config)
            time.sleep(0.5)
        time.sleep(1.0)  # nothing else may follow
        dead = dead_letters(broker.bootstrap, config)
        by_place = {(d.topic, d.partition, d.offset): d for d in dead}
        assert len(by_place) == len(dead) == len(sent), [
            (d.topic, d.offset, d.reason) for d in dead
        ]
        reasons = {
            "garbage": "not valid msgpack",
            "bad shape": "Frame.shape",
            "not an image": "not a readable image",
        }
        for what, (topic, partition, offset, value) in sent.items():
            letter = by_place.get((topic, partition, offset))
            assert letter is not None, (
                f"no dead letter for the {what} record at {topic}[{partition}]@{offset}"
            )
            assert letter.stage == "frame-operator", (what, letter)
            assert reasons[what] in letter.reason, (what, letter.reason)
            assert letter.value == value

        # every good frame got exactly one complete result
        assert set(good) <= collector.results.keys()
        for frame_id in good:
            result = collector.results[frame_id]
            assert not result.degraded, frame_id
            assert executed(result) == tuple(sorted(FAST_MODELS)), frame_id
        assert collector.duplicates == 0
        # an undecodable image is a valid record that entered the pipeline: it is dead-lettered
        # and still gets a result, degraded, with nothing executed
        junk = collector.results["junk:2"]
        assert junk.degraded and not executed(junk)
        assert all("frame decode failed" in (r.error or "") for r in junk.results)
        assert worker.proc.poll() is None, "the worker died"
    finally:
        producer.close()
        collector.close()


# -- two workers, one killed ------------------------------------------------------------------


def streams_covering(partitions: int) -> list[str]:
    """One stream id per partition, by the producer's murmur2 key partitioner."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        name = f"cam{i}"
        found.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % partitions, name)
        i += 1
    return [found[p] for p in range(partitions)]


def test_two_workers_split_partitions_and_survive_a_kill(
    broker: Any, faust_worker: Callable[..., FaustWorker], tmp_path: Path
) -> None:
    partitions = 4
    path, config = write_config(
        tmp_path, "ha", FAST_MODELS, partitions=partitions, warmup_frames=1000, output_timeout_s=5.0
    )
    names = config.topics.names()
    create_pipeline_topics(config, broker.bootstrap)
    workers = [
        faust_worker(APP, worker_env(path, broker.bootstrap, tmp_path / f"faust-{i}"), f"w{i}")
        for i in range(2)
    ]
    collector = ResultCollector(broker.bootstrap, names.results)
    everything = set(range(partitions))
    try:
        for w in workers:
            w.wait_ready(90)

        def split() -> bool:
            owned = [w.assigned_partitions(names.frames) for w in workers]
            return all(owned) and not owned[0] & owned[1] and owned[0] | owned[1] == everything

        wait_until("partitions split between the workers", split, 60, workers[0])
        members = group_members(broker.bootstrap, config)  # what `mlink status` counts
        assert members is not None and members["workers"] == 2, members
        assert members["model_sets"] == {model_set_id(config.specs()): 2}  # one config
        seen = look(broker.bootstrap, config)  # what `mlink exporter` serves
        assert seen.up and (seen.workers, seen.workers_on_other_models) == (2, 0), seen

        streams = streams_covering(partitions)
        victim, survivor = workers[1], workers[0]
        ids: list[str] = []
        killed_at = 0.0
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            for seq in range(24):  # 96 frames over ~12 s
                ids += send_frames(producer, streams, range(seq, seq + 1))
                if seq == 8:
                    assert victim.kill() == -9
                    killed_at = time.monotonic()
                time.sleep(0.5)
        wait_results(collector, set(ids), 90, [survivor])
        took = time.monotonic() - killed_at
        time.sleep(1.0)
        assert set(ids) <= collector.results.keys()  # one result per frame after dedupe
        assert survivor.assigned_partitions(names.frames) == everything
        assert survivor.proc.poll() is None
        degraded = sum(collector.results[f].degraded for f in ids)
        assert degraded == 0, "no model failed, so no result may be degraded"
        print(
            f"\nfailover: {len(ids)} frames, all results {took:.1f} s after the kill, "
            f"{collector.duplicates} duplicates, {degraded} degraded"
        )
    finally:
        collector.close()


def test_a_budget_from_the_cli_says_the_plan_it_got(digits_run: DigitsRun) -> None:
    """The new plan's prediction per model, so a model left far below shows at once."""
    said = digits_run.budget_said
    assert "planned at epoch 3" in said, said
    assert "predicted agreement: digit_svc " in said and "parity_logreg runs" in said, said


def test_probe_frames_report_live_agreement_of_the_plan(digits_run: DigitsRun) -> None:
    reports = [m for m in digits_run.control if m.kind == "agreement"]
    assert reports, "no live agreement was published"
    sets = active_sets(digits_run.control)
    for report in reports:
        inactive = set(digits_run.config.model_names) - set(sets[report.epoch].active)
        live = report.extra["live_agreement"]
        assert set(live) == inactive
        assert all(0.0 <= v <= 1.0 for v in live.values())
        assert report.extra["probes"] % 5 == 0
        assert report.link_version == sets[report.epoch].link_version
