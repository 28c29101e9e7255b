"""A trainer handover: the worker that holds the single-partition samples topic (and so trains
the links) stops after the first link version, and the other worker takes the partition over.
With ``retrain_every`` 0 the new holder must not train the links a second time. Real workers,
real broker (~60 s on the 2-core dev machine)."""

from __future__ import annotations

import errno
import os
import re
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlink.deploy.config import PipelineConfig
from mlink.deploy.link_pins import pin_message
from mlink.deploy.runner import ResultCollector, publish_control, read_control
from mlink.deploy.source import FrameProducer
from mlink.deploy.topics_setup import create_pipeline_topics
from mlink.linkstore.store import LinkStore
from mlink.linkstore.store_format import TENSORS_FILE
from mlink.topics.control import QUICK_KEY
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import (
    APP,
    FAST_MODELS,
    dead_letters,
    send_frames,
    wait_results,
    wait_until,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.broker

STREAMS = ["cam-a", "cam-b"]


@dataclass
class TwoWorkers:
    """Two ready workers of one pipeline, which of them trains, a collector of its results and
    a producer of its frames."""

    workers: list[FaustWorker]
    trainer: FaustWorker  # the holder of the samples partition
    other: FaustWorker
    samples: str
    collector: ResultCollector
    producer: FrameProducer

    def hand_over(self) -> None:
        """Stop the trainer; return once the other worker holds the samples partition."""
        self.trainer.stop()
        wait_until(
            "the handover",
            lambda: self.other.assigned_partitions(self.samples) == {0},
            60,
            self.other,
        )


@contextmanager
def two_workers(
    faust_worker: Callable[..., FaustWorker],
    path: Path,
    config: PipelineConfig,
    broker: Any,
    tmp_path: Path,
) -> Iterator[TwoWorkers]:
    """The topics of ``config`` (written at ``path``) and two workers of it, both ready (their
    trainer agents started before any links), once one alone holds the samples partition."""
    create_pipeline_topics(config, broker.bootstrap)
    names = config.topics.names()
    workers = [
        faust_worker(APP, worker_env(path, broker.bootstrap, tmp_path / f"faust-{i}"), f"w{i}")
        for i in range(2)
    ]
    for w in workers:
        w.wait_ready(90)

    def holders() -> list[FaustWorker]:
        return [w for w in workers if w.assigned_partitions(names.samples)]

    wait_until("one holder of the samples partition", lambda: len(holders()) == 1, 60, workers[0])
    trainer = holders()[0]
    other = next(w for w in workers if w is not trainer)
    collector = ResultCollector(broker.bootstrap, names.results)
    try:
        with FrameProducer(broker.bootstrap, names.frames) as producer:
            yield TwoWorkers(workers, trainer, other, names.samples, collector, producer)
    finally:
        collector.close()


def test_the_worker_that_takes_over_the_trainer_does_not_train_the_links_again(
    broker: Any, faust_worker: Callable[..., FaustWorker], tmp_path: Path
) -> None:
    """Audit: a trainer took the announced links as trained only when its agent started, so a
    worker started before v1 was trained trained again once it held the samples partition."""
    path, config = write_config(
        tmp_path,
        "handover",
        FAST_MODELS,
        partitions=2,
        warmup_frames=8,
        output_timeout_s=5.0,
        links={"retrain_every": 0, "probe_every": 2, "epochs": 5},
    )
    with two_workers(faust_worker, path, config, broker, tmp_path) as run:
        trainer, other, collector = run.trainer, run.other, run.collector
        sent = send_frames(run.producer, STREAMS, range(0, 4))  # the warm-up's 8 frames
        wait_until("links v1", lambda: "trained links v1 " in trainer.log(), 90, trainer)
        wait_until("a plan from v1", lambda: "links=v1" in other.log(), 60, other)
        wait_results(collector, set(sent), 60, run.workers)
        run.hand_over()  # the holder stops: the other worker takes the partition over
        # every other frame is a probe: 20 samples for the new holder, more than the 8 a
        # first training needs
        sent += send_frames(run.producer, STREAMS, range(4, 24))
        wait_results(collector, set(sent), 90, [other])

        def reports() -> int:  # one per 5 probes added to the new holder's buffer
            return other.log().count("live agreement at epoch")

        wait_until("10 probes at the new holder", lambda: reports() >= 2, 60, other)
        assert "training links on" not in other.log(), "the new holder trained the links again"
        assert [v.version for v in LinkStore(config.links.store).versions()] == [1]
        assert other.proc.poll() is None


def test_a_handover_during_the_full_first_links_ends_with_full_links_from_the_new_holder(
    broker: Any, faust_worker: Callable[..., FaustWorker], tmp_path: Path
) -> None:
    """A rolling restart while the quick first links are in force and the full ones train: the
    holder of the samples partition stops under its full training, and the worker that takes
    the partition over does not take the quick version for trained links. It reads back the
    samples the worker before it had (its buffer started empty: it waited for a new warm-up's
    worth of probes), trains the full links at once and announces them (not quick); the
    controller re-plans from them, and every frame is answered once."""
    warmup = 24
    path, config = write_config(
        tmp_path,
        "quickhandover",
        FAST_MODELS,
        partitions=2,
        warmup_frames=warmup,
        output_timeout_s=5.0,
        fraction=0.5,
        # the full training takes tens of seconds (300 epochs): the stop comes during it
        links={"stream": True, "probe_every": 2, "first_epochs": 5, "epochs": 300},
    )
    with two_workers(faust_worker, path, config, broker, tmp_path) as run:
        trainer, other, collector = run.trainer, run.other, run.collector
        sent = send_frames(run.producer, STREAMS, range(0, warmup // len(STREAMS)))
        wait_until(
            "the full training", lambda: "training links on 24 " in trainer.log(), 240, trainer
        )
        wait_until("a plan from v1", lambda: "links=v1" in other.log(), 60, other)
        run.hand_over()  # under the full training
        assert "trained the quick first links v1 " in trainer.log()
        assert "trained links v" not in trainer.log(), "the full training ended first"
        # a few probes: with the warm-up's samples the worker before it had, read back,
        # the new holder has a warm-up's worth at once (a few new probes would not do)
        sent += send_frames(run.producer, STREAMS, range(12, 14))
        wait_until("full links v2", lambda: "trained links v2 " in other.log(), 600, other)
        read_back = re.search(r"read back \d+ samples .*?, (\d+) of them new", other.log())
        assert read_back and int(read_back.group(1)) >= warmup, other.log()[-3000:]
        sent += send_frames(run.producer, STREAMS, range(14, 40))
        wait_until("a plan from v2", lambda: "links=v2" in other.log(), 60, other)
        sent += send_frames(run.producer, STREAMS, range(40, 50))
        wait_results(collector, set(sent), 120, [other])
        log = other.log()
        assert "quick first links" not in log, "the new holder trained quick links again"
        assert [v.version for v in LinkStore(config.links.store).versions()] == [1, 2]
        _, control = read_control(broker.bootstrap, config)
        announced = {m.link_version: m.extra for m in control if m.kind == "link_version"}
        assert announced == {1: {QUICK_KEY: True}, 2: {}}, announced
        plans = [m for m in control if m.kind == "active_set"]
        assert [m.link_version for m in plans][:1] == [1] and plans[-1].link_version == 2
        late = [collector.results[f] for f in sent[-20:]]  # sent after the plan from v2
        assert all(r.epoch == plans[-1].epoch and not r.degraded for r in late)
        assert collector.duplicates == 0
        assert not dead_letters(broker.bootstrap, config)
        assert other.proc.poll() is None


def test_a_plan_a_stop_cuts_short_is_made_by_the_next_controller(
    broker: Any, faust_worker: Callable[..., FaustWorker], tmp_path: Path
) -> None:
    """Stop 52, a rolling restart under a backlog: the worker that held the controller stopped
    while it planned from the quick first links. faust acks an agent's event when its iteration
    ends, also when a stop cancels the agent halfway, so the controller that took over started
    after the announcement and no plan used those links until the next version (100 s later).
    Here the controller's read of a pinned v2 blocks (its tensors file is a FIFO) until its
    worker is stopping; the next controller must plan from v2."""
    path, config = write_config(
        tmp_path,
        "cutshort",
        FAST_MODELS,
        partitions=2,
        warmup_frames=8,
        output_timeout_s=5.0,
        links={"retrain_every": 0, "probe_every": 2, "epochs": 5},
    )
    control_topic = config.topics.names().control
    with two_workers(faust_worker, path, config, broker, tmp_path) as run:
        sent = send_frames(run.producer, STREAMS, range(0, 4))  # the warm-up's 8 frames
        wait_until("links v1", lambda: "trained links v1 " in run.trainer.log(), 90, run.trainer)
        for w in run.workers:
            wait_until("a plan from v1", lambda w=w: "links=v1" in w.log(), 60, w)
        controller = next(w for w in run.workers if w.assigned_partitions(control_topic))
        successor = next(w for w in run.workers if w is not controller)
        # v2, the same links, whose tensors the test hands over only when it chooses
        store = LinkStore(config.links.store)
        v1 = store.load(1)
        assert store.save(v1.tensors, v1.meta.meta) == 2
        tensors = Path(config.links.store) / "v000002" / TENSORS_FILE  # the store's layout
        payload = tensors.read_bytes()
        tensors.unlink()
        os.mkfifo(tensors)
        publish_control(broker.bootstrap, config, pin_message(2, True))
        wait_until(
            "the controller planning from v2",
            lambda: "from link version 2" in controller.log(),
            60,
            controller,
        )
        writer = None

        def reader_waits() -> bool:  # only the controller reads v2: no plan uses it yet
            nonlocal writer
            try:
                writer = os.open(tensors, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: nobody has it open for reading yet
                assert exc.errno == errno.ENXIO, exc
                return False
            return True

        wait_until("the controller reading v2", reader_waits, 60, controller)
        controller.signal(signal.SIGTERM)  # it stops while the read (and its plan) waits
        wait_until(
            "the controller agent stopping",
            lambda: re.search(r"controller\]: Stopping", controller.log()) is not None,
            30,
            controller,
        )
        tensors.unlink()  # the real file for the next controller; the stopped one reads EOF
        tensors.write_bytes(payload)
        os.close(writer)
        assert controller.proc.wait(60) is not None
        wait_until("a plan from v2", lambda: "links=v2" in successor.log(), 90, successor)
        sent += send_frames(run.producer, STREAMS, range(4, 8))
        wait_results(run.collector, set(sent), 90, [successor])
        assert not dead_letters(broker.bootstrap, config)
        assert successor.proc.poll() is None
