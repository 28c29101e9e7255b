"""Two pipelines on one ``topics.prefix`` (a new user's audit, stop 45): both answered every
frame on one results topic, and nothing said so. Records carry the writer's pipeline name; a
worker refuses a prefix whose other pipeline has live workers, and skips the records of one
that has none. On the real broker with real workers; the header logic without one."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from mlink.deploy.config import load_config
from mlink.deploy.runner import publish_control, read_control
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.operators.prefix_owner import MAX_NAMES, ForeignWriters
from mlink.topics.pipeline_header import (
    PIPELINE_HEADER,
    other_writer,
    pipeline_header,
    written_by,
)
from mlink.topics.records import ControlMessage
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import APP, FAST_MODELS, worker_env, write_config


def test_the_header_names_the_writer_and_nothing_else() -> None:
    assert written_by([pipeline_header("cams")]) == "cams"
    assert written_by({PIPELINE_HEADER: b"lobby"}) == "lobby"
    assert written_by([(PIPELINE_HEADER.encode(), b"x"), ("other", b"y")]) == "x"
    for headers in (None, [], [("other", b"y")], [(PIPELINE_HEADER, b"\xff")], [("bad",)]):
        assert written_by(headers) is None  # an older writer, a user's producer, garbage
    assert written_by([(PIPELINE_HEADER, b"n" * 10_000)]) is None
    assert other_writer([pipeline_header("cams")], "lobby") == "cams"
    assert other_writer([pipeline_header("cams")], "cams") is None  # its own
    assert other_writer([], "cams") is None  # names no writer: counts as its own


def test_other_pipelines_are_remembered_within_bounds() -> None:
    foreign = ForeignWriters("mine", "p.control")
    assert "'cams'" in foreign.seen("cams", 1_000.0, live=False)
    foreign.seen("cams", 5_000.0, live=True)
    assert foreign.newest == {"cams": 5.0}
    for i in range(3 * MAX_NAMES):  # names are data: what a record says must not grow memory
        foreign.seen(f"p{i}", 1.0, live=True)
    assert len(foreign.newest) == MAX_NAMES


def _on_prefix(tmp_path: Path, tag: str, prefix: str | None, models: tuple[str, ...]) -> Path:
    path, _ = write_config(
        tmp_path, tag, models, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    if prefix is not None:  # a config copied, its prefix left alone
        data = yaml.safe_load(path.read_text())
        data["topics"]["prefix"] = prefix
        path.write_text(yaml.safe_dump(data))
    return path


def test_a_pipeline_on_a_live_pipelines_prefix_stops_with_the_fix(broker, tmp_path: Path) -> None:
    first = _on_prefix(tmp_path, "cams", None, FAST_MODELS)
    cams = load_config(first)
    prefix = cams.topics.prefix
    gone = load_config(_on_prefix(tmp_path, "gone", prefix, FAST_MODELS[:2]))
    hall = _on_prefix(tmp_path, "hall", prefix, FAST_MODELS[:3])
    create_pipeline_topics(cams, broker.bootstrap)

    def budget() -> ControlMessage:
        return ControlMessage(kind="budget", epoch=0, issued_at=time.time(), budget={"ms": 50.0})

    publish_control(broker.bootstrap, gone, budget())  # a pipeline renamed since, say
    env = worker_env(first, broker.bootstrap, tmp_path / "f1")
    running = FaustWorker(APP, env, tmp_path / "cams.log", "cams")
    late = None
    try:
        running.wait_ready()  # the other pipeline has no workers: skipped, said, not fatal
        deadline = time.monotonic() + 60  # said once the replay reaches the end
        while "has no live workers" not in running.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        said = " ".join(running.log().split())
        assert f"holds records of pipeline {gone.name!r}" in said, running.log_tail()
        assert "has no live workers" in said

        # cams has planned nothing (no frames yet): its worker's start-up record alone is
        # what tells hall (before, hall started beside it and both answered every frame)
        env = worker_env(hall, broker.bootstrap, tmp_path / "f2")
        late = FaustWorker(APP, env, tmp_path / "hall.log", "hall")
        assert late.proc.wait(timeout=180) != 0  # it ends itself
        said = " ".join(late.log().split())
        assert f"is in use by pipeline {cams.name!r}" in said, late.log_tail()
        assert "its own topics.prefix" in said
        last = [line for line in late.log().splitlines() if line.strip()][-1]
        assert "worker stopped:" in last and "is in use by pipeline" in last, late.log_tail()

        # `mlink status` of the late config shows neither pipeline's budget as its own
        foreign: dict[str, float] = {}
        state, _ = read_control(broker.bootstrap, load_config(hall), foreign=foreign)
        assert foreign.keys() == {cams.name, gone.name} and not state.requested_budget
    finally:
        running.stop()
        if late is not None:
            late.stop()
