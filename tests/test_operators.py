"""The operators' pure logic, without a broker: control state and plans, joining and assembling
results, running models, the trainer and the controller's decision on a small trained link set."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mlink.deploy.config import PipelineConfig, parse_config
from mlink.linkstore import bundle
from mlink.linkstore.budget import (
    full_cost,
    next_plan_budget,
    non_probe_overrun,
    payback_frames,
    resolve_budget,
    typical_ms,
)
from mlink.linkstore.bundle import LoadedLinks, load_bundle
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.selection import InfeasibleBudget
from mlink.linkstore.store import LinkStore, StoreError
from mlink.linkstore.training import TrainConfig
from mlink.operators import LinkSettings, MLink, Model, Settings, runtime
from mlink.operators.controller import decide, model_costs
from mlink.operators.joiner import (
    JoinBuffer,
    PendingFrame,
    build_results,
    is_training_sample,
)
from mlink.operators.model_runner import ModelRunner
from mlink.operators.state import ControlState
from mlink.operators.trainer import LinkTrainer
from mlink.operators.training_process import TrainingJob, run_training_job
from mlink.topics.records import (
    ControlMessage,
    FrameResult,
    ModelOutput,
    ModelResult,
    Plan,
    PlanNotice,
)
from mlink.topics.specs import VectorSpec

MODELS = ("digit", "parity", "value")
SPECS = {
    "digit": VectorSpec(5, "softmax"),
    "parity": VectorSpec(2, "softmax"),
    "value": VectorSpec(1, "linear"),
}
FAST = TrainConfig(epochs=5, ensemble_epochs=5)
COSTS = {"digit": 10.0, "parity": 1.0, "value": 5.0}


def train_and_save(trainer: LinkTrainer) -> int:
    """What the trainer agent does with a due training: the job of every buffered sample, saved
    to the trainer's store, noted as trained."""
    outcome = run_training_job(TrainingJob.from_trainer(trainer))
    assert outcome.version is not None
    return trainer.saved(outcome.version)


def truth(n: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Outputs of three related models: a digit 0-4, its parity and its value."""
    digit = np.random.default_rng(seed).integers(0, 5, n)
    return {
        "digit": [np.eye(5, dtype=np.float32)[d] for d in digit],
        "parity": [np.eye(2, dtype=np.float32)[d % 2] for d in digit],
        "value": [np.array([d], dtype=np.float32) for d in digit],
    }


def control(kind: str, epoch: int = 0, **fields: Any) -> ControlMessage:
    return ControlMessage(kind=kind, epoch=epoch, issued_at=time.time(), **fields)


def active_set(epoch: int, active: tuple[str, ...], version: int = 1, probe_every: int = 4):
    return control(
        "active_set",
        epoch,
        active=tuple(sorted(active)),
        link_version=version,
        probe_every=probe_every,
    )


def notice(frame_id: str, active: tuple[str, ...], probe: bool = False, version: int | None = 1):
    seq = int(frame_id.split(":")[1])
    plan = Plan(epoch=2, active=tuple(sorted(active)), probe=probe, link_version=version)
    return PlanNotice(
        frame_id=frame_id, stream_id="s", seq=seq, plan=plan, timestamp=1.0, planned_at=2.0
    )


def output(frame_id: str, model: str, value: Any = None, error: str | None = None) -> ModelOutput:
    if value is None:
        value = truth(1)[model][0] if error is None else np.zeros(0, np.float32)
    return ModelOutput(
        frame_id=frame_id,
        stream_id="s",
        seq=int(frame_id.split(":")[1]),
        model=model,
        output=np.asarray(value, dtype=np.float32),
        epoch=2,
        elapsed_ms=3.0,
        produced_at=2.5,
        error=error,
    )


def event(partition: int = 0) -> SimpleNamespace:
    """What the join buffer needs of a faust event: ``event.message.tp``."""
    return SimpleNamespace(message=SimpleNamespace(tp=("outputs", partition)))


def pipeline_config(store: Path, probe_every: int = 4, fraction: float = 0.5) -> PipelineConfig:
    return parse_config(
        {
            "name": "unit",
            "source": {"factory": "mlink.eval.workloads.digits:frames"},
            "models": [
                {
                    "name": m,
                    "factory": "mlink.eval.workloads.digits:model",
                    "output": SPECS[m].to_dict(),
                    "cost": {"ms": COSTS[m]},
                }
                for m in MODELS
            ],
            "budget": {"fraction": fraction},
            "links": {"store": str(store), "probe_every": probe_every, "warmup_frames": 8},
        }
    )


def probe_result(
    frame_id: str, outputs: dict[str, np.ndarray], ms: float = 2.0, synthesized: str = ""
) -> FrameResult:
    """A result where every model of ``outputs`` executed (but ``synthesized``, if given)."""
    return FrameResult(
        frame_id=frame_id,
        stream_id="s",
        seq=int(frame_id.split(":")[1]),
        epoch=0,
        results=tuple(
            ModelResult(model=m, output=o, status="synthesized", sources=("digit",))
            if m == synthesized
            else ModelResult(model=m, output=o, status="executed", elapsed_ms=ms)
            for m, o in outputs.items()
        ),
        degraded=False,
        emitted_at=1.0,
    )


def assemble_result(
    state: PendingFrame,
    models: tuple[str, ...],
    linkset: LinkSet | None,
    now: float,
    timed_out: bool = False,
) -> FrameResult:
    """One frame through the link operator's core, as the split link operator calls it."""
    work = state.work("no output within 5 s" if timed_out else None)
    return build_results([work], models, {1: linkset} if linkset else {}, now)[0]


@pytest.fixture(scope="module")
def linkset() -> LinkSet:
    return LinkSet.train(SPECS, truth(60), FAST, progress=False)


# -- ControlState -------------------------------------------------------------------------------


def test_state_warms_up_running_every_model_on_probe_frames() -> None:
    state = ControlState(["value", "digit", "parity"], probe_every=4)
    assert state.models == MODELS and state.warming_up
    for seq in (0, 1, 5):
        plan = state.plan(seq)
        assert (plan.epoch, plan.active, plan.probe, plan.link_version) == (0, MODELS, True, None)


def test_state_applies_active_sets_in_epoch_order_only() -> None:
    state = ControlState(MODELS, probe_every=4)
    assert state.apply(active_set(1, ("value", "digit"), version=1))
    assert (state.epoch, state.active, state.link_version) == (1, ("digit", "value"), 1)
    assert not state.warming_up
    # replays and stale epochs change nothing
    assert not state.apply(active_set(1, ("parity",), version=1))
    assert not state.apply(active_set(0, ("parity",), version=1))
    assert state.active == ("digit", "value")
    # epochs may skip; the newest wins with its link version and probe period
    assert state.apply(active_set(3, ("parity",), version=2, probe_every=5))
    assert (state.epoch, state.active, state.link_version, state.probe_every) == (
        3,
        ("parity",),
        2,
        5,
    )
    assert not state.apply(active_set(2, ("digit",), version=1))
    assert state.epoch == 3


def test_state_budget_and_link_version_messages_do_not_change_the_plan() -> None:
    state = ControlState(MODELS, probe_every=4)
    state.apply(active_set(1, ("digit",)))
    before = state.plan(1)
    assert not state.apply(control("budget", budget={"fraction": 0.2}))
    assert state.requested_budget == {"fraction": 0.2}
    assert not state.apply(control("link_version", 1, link_version=4))
    assert not state.apply(control("link_version", 1, link_version=2))
    assert state.latest_links == 4
    assert not state.apply(control("agreement", 1))
    assert state.plan(1) == before and state.link_version == 1


def test_state_rejects_active_sets_naming_unknown_models() -> None:
    state = ControlState(MODELS)
    outcome = state.apply(active_set(1, ("digit", "ghost")))
    assert outcome.rejected and "unknown models ['ghost']" in outcome.reason
    assert state.epoch == 0 and state.warming_up


def test_state_without_link_version_keeps_warming_up() -> None:
    state = ControlState(MODELS, probe_every=4)
    assert state.apply(active_set(1, ("digit",), version=None))  # type: ignore[arg-type]
    assert state.warming_up
    assert state.plan(3).active == MODELS and state.plan(3).probe


def test_plan_probes_every_nth_frame_after_warm_up() -> None:
    state = ControlState(MODELS)
    state.apply(active_set(2, ("parity", "value"), version=7, probe_every=4))
    plans = [state.plan(seq) for seq in range(9)]
    assert [p.probe for p in plans] == [seq % 4 == 0 for seq in range(9)]
    for seq, plan in enumerate(plans):
        assert plan.epoch == 2 and plan.link_version == 7
        assert plan.active == (MODELS if seq % 4 == 0 else ("parity", "value"))
    state.apply(active_set(3, ("digit",), probe_every=0))
    assert not any(state.plan(seq).probe for seq in range(9))  # 0 turns probes off


def test_replaying_the_same_control_log_gives_the_same_state() -> None:
    log = [
        control("budget", budget={"fraction": 0.5}),
        control("link_version", 0, link_version=1),
        active_set(1, ("digit",), version=1),
        active_set(2, ("parity", "value"), version=1),
        active_set(1, ("digit",), version=1),  # a redelivered duplicate
        control("link_version", 2, link_version=2),
    ]
    a, b = ControlState(MODELS, 4), ControlState(MODELS, 4)
    for message in log:
        a.apply(message)
    for message in log + log:
        b.apply(message)
    assert (a.epoch, a.active, a.link_version) == (b.epoch, b.active, b.link_version)
    assert [a.plan(s) for s in range(6)] == [b.plan(s) for s in range(6)]


# -- PendingFrame and JoinBuffer ----------------------------------------------------------------


def test_pending_frame_completes_once_notice_and_every_active_output_arrived() -> None:
    pending = PendingFrame("s:1")
    pending.add(output("s:1", "digit"))  # outputs may come before the notice
    assert not pending.complete and pending.expected == ()
    pending.add(notice("s:1", ("digit", "value")))
    assert pending.expected == ("digit", "value") and not pending.complete
    pending.add(output("s:1", "parity"))  # not expected: does not complete the frame
    assert not pending.complete
    pending.add(output("s:1", "value"))
    assert pending.complete


def test_pending_frame_keeps_the_first_copy_of_a_redelivered_output() -> None:
    pending = PendingFrame("s:1")
    first = output("s:1", "parity", [1.0, 0.0])
    pending.add(first)
    pending.add(output("s:1", "parity", [0.0, 1.0]))
    assert pending.outputs["parity"] is first


def test_join_buffer_holds_events_until_pop_and_finds_overdue_frames() -> None:
    joins = JoinBuffer()
    e1, e2, e3 = event(0), event(0), event(1)
    state = joins.add(notice("s:1", ("digit",)), e1, now=100.0)
    assert not state.complete
    assert joins.add(output("s:1", "digit"), e2, now=101.0) is state and state.complete
    joins.add(notice("s:2", ("digit",)), e3, now=103.0)
    assert state.first_seen == 100.0
    assert joins.overdue(now=104.0, timeout=5.0) == []
    assert joins.overdue(now=105.0, timeout=5.0) == ["s:1"]
    assert sorted(joins.overdue(now=110.0, timeout=5.0)) == ["s:1", "s:2"]
    assert joins.pop("s:1") == [e1, e2]
    assert "s:1" not in joins.frames and joins.pop("s:1") == []
    assert joins.overdue(now=110.0, timeout=5.0) == ["s:2"]


def test_join_buffer_drops_frames_of_revoked_partitions() -> None:
    joins = JoinBuffer()
    joins.add(notice("s:1", ("digit",)), event(0), 1.0)
    joins.add(notice("s:2", ("digit",)), event(1), 1.0)
    joins.add(output("s:2", "digit"), event(1), 1.0)
    joins.add(notice("s:3", ("digit",)), event(2), 1.0)
    assert joins.drop_partitions({("outputs", 1), ("outputs", 2)}) == 2
    assert set(joins.frames) == set(joins.events) == set(joins.partitions) == {"s:1"}
    assert joins.drop_partitions({("outputs", 9)}) == 0


# -- assemble_result and is_training_sample -----------------------------------------------------


def pending(frame_id: str, active: tuple[str, ...], probe: bool = False, **errors: str):
    state = PendingFrame(frame_id, first_seen=1.0)
    state.add(notice(frame_id, active, probe))
    for m in active:
        state.add(output(frame_id, m, error=errors.get(m)))
    return state


def test_assemble_result_marks_executed_and_synthesized_outputs(linkset: LinkSet) -> None:
    result = assemble_result(pending("s:1", ("parity", "value")), MODELS, linkset, now=9.0)
    by_model = {r.model: r for r in result.results}
    assert [r.model for r in result.results] == list(MODELS)
    assert (result.frame_id, result.stream_id, result.seq, result.epoch) == ("s:1", "s", 1, 2)
    assert not result.degraded and result.timestamp == 1.0 and result.emitted_at == 9.0
    for m in ("parity", "value"):
        assert by_model[m].status == "executed" and by_model[m].elapsed_ms == 3.0
        assert np.array_equal(by_model[m].output, truth(1)[m][0])
    digit = by_model["digit"]
    assert digit.status == "synthesized"
    assert digit.sources == ("parity", "value") and digit.link_version == 1
    real = {m: [by_model[m].output] for m in digit.sources}
    assert np.allclose(linkset.synthesize("digit", real)[0], digit.output)
    assert not is_training_sample(result)


def test_assemble_result_without_links_marks_inactive_models_missing() -> None:
    result = assemble_result(pending("s:1", ("digit",)), MODELS, None, now=1.0)
    statuses = {r.model: r.status for r in result.results}
    assert statuses == {"digit": "executed", "parity": "missing", "value": "missing"}
    assert not result.degraded
    assert all(r.output.size == 0 for r in result.results if r.status == "missing")


def test_a_failed_model_degrades_the_result_and_is_synthesized(linkset: LinkSet) -> None:
    state = pending("s:1", ("digit", "value"), value="model value raised ValueError: boom")
    assert state.complete  # an error counts as arrived: the frame need not wait for it
    result = assemble_result(state, MODELS, linkset, now=1.0)
    statuses = {r.model: r.status for r in result.results}
    assert result.degraded
    assert statuses == {"digit": "executed", "parity": "synthesized", "value": "synthesized"}
    by_model = {r.model: r for r in result.results}
    assert by_model["value"].sources == ("digit",)
    assert by_model["value"].error == "model value raised ValueError: boom"
    assert by_model["parity"].error is None  # inactive by plan, not a failure


def test_a_timed_out_frame_is_degraded(linkset: LinkSet) -> None:
    state = PendingFrame("s:4", first_seen=1.0)
    state.add(notice("s:4", ("digit", "parity")))
    state.add(output("s:4", "digit"))
    assert not state.complete
    result = assemble_result(state, MODELS, linkset, now=20.0, timed_out=True)
    statuses = {r.model: r.status for r in result.results}
    assert result.degraded
    assert statuses == {"digit": "executed", "parity": "synthesized", "value": "synthesized"}
    assert {r.model: r.error for r in result.results}["parity"] == "no output within 5 s"


def test_outputs_without_a_notice_expect_every_model() -> None:
    state = PendingFrame("s:7", first_seen=1.0)
    for m in MODELS:
        state.add(output("s:7", m))
    result = assemble_result(state, MODELS, None, now=5.0, timed_out=True)
    assert result.epoch == 0 and result.timestamp is None and not result.degraded
    assert all(r.status == "executed" for r in result.results)
    partial = PendingFrame("s:8")
    partial.add(output("s:8", "digit"))
    assert assemble_result(partial, MODELS, None, now=5.0).degraded


def test_only_complete_probe_results_are_training_samples() -> None:
    probe = pending("s:0", MODELS, probe=True)
    result = assemble_result(probe, MODELS, None, now=1.0)
    assert result.probe and is_training_sample(result)
    not_probe = pending("s:0", MODELS, probe=False)
    assert not is_training_sample(assemble_result(not_probe, MODELS, None, 1.0))
    failed = pending("s:0", MODELS, probe=True, digit="model digit raised RuntimeError: x")
    failed_result = assemble_result(failed, MODELS, None, now=1.0)
    assert failed_result.degraded
    assert not is_training_sample(failed_result)


# -- ModelRunner --------------------------------------------------------------------------------


class Parity:
    """A black box returning parity probabilities of a frame's first pixel; counts its calls."""

    def __init__(self, fail_on: int | None = None, batch_ok: bool = True) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.fail_on, self.batch_ok = fail_on, batch_ok

    def one(self, frame: np.ndarray) -> np.ndarray:
        value = int(frame.flat[0])
        if value == self.fail_on:
            raise ValueError(f"cannot handle {value}")
        return np.eye(2, dtype=np.float32)[value % 2]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls.append(frames.shape)
        if frames.ndim == 3:
            if not self.batch_ok:
                raise RuntimeError("no batches today")
            return np.stack([self.one(f) for f in frames])
        return self.one(frames)


def frames(*values: int, shape: tuple[int, int] = (2, 2)) -> list[np.ndarray]:
    return [np.full(shape, v, np.uint8) for v in values]


def test_batch_model_is_called_once_per_batch() -> None:
    model = Parity()
    outcomes = ModelRunner("parity", model, SPECS["parity"], batch=True).run(frames(1, 2, 3))
    assert model.calls == [(3, 2, 2)]
    assert [o.error for o in outcomes] == [None] * 3
    assert [int(o.output.argmax()) for o in outcomes] == [1, 0, 1]
    assert all(o.output.dtype == np.float32 and o.elapsed_ms >= 0 for o in outcomes)


def test_a_call_is_priced_on_its_threads_cpu_time_not_on_waiting() -> None:
    """Wall time counts the turns other models take on a shared core; plans price CPU time."""

    def waits(frame: np.ndarray) -> np.ndarray:
        time.sleep(0.05)  # the thread waits, as it does while other models hold the cores
        return np.array([0.5, 0.5], np.float32)

    def works(frame: np.ndarray) -> np.ndarray:
        start = time.thread_time()
        while time.thread_time() - start < 0.02:
            pass
        return np.array([0.5, 0.5], np.float32)

    (waited,) = ModelRunner("parity", waits, SPECS["parity"]).run(frames(1))
    assert waited.elapsed_ms >= 50.0 and waited.cpu_ms < waited.elapsed_ms / 2
    (worked,) = ModelRunner("parity", works, SPECS["parity"]).run(frames(1))
    assert worked.cpu_ms >= 20.0 and worked.elapsed_ms >= worked.cpu_ms * 0.99

    def works_on_batches(batch: np.ndarray) -> np.ndarray:
        return np.stack([works(f) for f in batch])

    batch = ModelRunner("parity", works_on_batches, SPECS["parity"], batch=True).run(frames(1, 2))
    assert all(o.cpu_ms >= 20.0 for o in batch)  # the batch's time shared between its frames
    (failed,) = ModelRunner("parity", Parity(fail_on=1), SPECS["parity"]).run(frames(1))
    assert failed.error and failed.cpu_ms is not None


def test_single_model_and_mixed_shapes_run_frame_by_frame() -> None:
    model = Parity()
    ModelRunner("parity", model, SPECS["parity"], batch=False).run(frames(1, 2))
    assert model.calls == [(2, 2), (2, 2)]
    model = Parity()
    mixed = frames(1) + frames(2, shape=(3, 3))
    outcomes = ModelRunner("parity", model, SPECS["parity"], batch=True).run(mixed)
    assert model.calls == [(2, 2), (3, 3)] and all(o.error is None for o in outcomes)
    model = Parity()
    ModelRunner("parity", model, SPECS["parity"], batch=True).run(frames(1))
    assert model.calls == [(2, 2)]  # a batch of one is just a call


def test_a_raising_model_yields_an_error_for_its_frame_only() -> None:
    runner = ModelRunner("parity", Parity(fail_on=2), SPECS["parity"], batch=False)
    outcomes = runner.run(frames(1, 2, 3))
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert outcomes[1].output is None
    assert outcomes[1].error == "model parity raised ValueError: cannot handle 2"


def test_invalid_outputs_become_errors() -> None:
    def bad(frame: np.ndarray) -> np.ndarray:
        return {1: np.array([0.5, 0.6]), 2: np.array([np.nan, 1.0]), 3: np.ones(3)}[
            int(frame.flat[0])
        ]

    outcomes = ModelRunner("parity", bad, SPECS["parity"]).run(frames(1, 2, 3))
    assert all(o.output is None for o in outcomes)
    assert all(o.error.startswith("invalid output: parity:") for o in outcomes)
    assert "sum to 1.1000" in outcomes[0].error
    assert "NaN" in outcomes[1].error
    assert "expected shape (2,), got (3,)" in outcomes[2].error


def test_failing_batch_falls_back_to_single_frames() -> None:
    model = Parity(fail_on=2)  # the batch raises because one frame does
    outcomes = ModelRunner("parity", model, SPECS["parity"], batch=True).run(frames(1, 2, 3))
    assert model.calls == [(3, 2, 2), (2, 2), (2, 2), (2, 2)]
    assert [o.error is None for o in outcomes] == [True, False, True]
    model = Parity(batch_ok=False)  # a model that cannot batch after all still works
    outcomes = ModelRunner("parity", model, SPECS["parity"], batch=True).run(frames(1, 2))
    assert [o.error for o in outcomes] == [None, None]


def test_batch_with_the_wrong_number_of_outputs_fails_every_frame() -> None:
    def short(batch: np.ndarray) -> np.ndarray:
        return np.tile(np.array([1.0, 0.0], np.float32), (len(batch) - 1, 1))

    outcomes = ModelRunner("parity", short, SPECS["parity"], batch=True).run(frames(1, 2, 3))
    assert all(o.output is None for o in outcomes)
    assert all(o.error == "batch of 3 frames returned 2 outputs" for o in outcomes)


# -- LinkTrainer --------------------------------------------------------------------------------


def test_trainer_is_ready_after_warm_up_and_ignores_duplicates(tmp_path: Path) -> None:
    trainer = LinkTrainer(SPECS, LinkStore(tmp_path), FAST, warmup_frames=3)
    data = truth(4)
    samples = [{m: data[m][i] for m in MODELS} for i in range(4)]
    assert trainer.add(probe_result("s:0", samples[0], ms=2.0))
    assert not trainer.add(probe_result("s:0", samples[1]))  # redelivered: ignored
    assert trainer.add(probe_result("s:1", samples[1], ms=4.0))
    assert len(trainer.samples) == 2 and not trainer.ready()
    # only results where every model of the pipeline executed are training pairs
    partial = probe_result("s:9", {m: samples[2][m] for m in ("digit", "parity")})
    assert not trainer.add(partial)
    synthesized = probe_result("s:8", samples[2], synthesized="value")
    assert not trainer.add(synthesized)
    assert trainer.add(probe_result("s:2", samples[2], ms=6.0))
    assert trainer.ready() and trainer.new_since_training == 3
    assert trainer.measured_costs() == {m: {"ms": 4.0} for m in MODELS}
    # a worker that measured its calls' CPU time is priced on it rather than on wall time
    timed = probe_result("s:3", samples[3], ms=100.0)
    cpu = tuple(dataclasses.replace(r, cpu_ms=4.0) for r in timed.results)
    assert trainer.add(dataclasses.replace(timed, results=cpu))
    assert trainer.measured_costs() == {m: {"ms": 4.0} for m in MODELS}


def test_the_trainer_counts_the_frames_a_batch_held_from_when_results_were_emitted(
    tmp_path: Path,
) -> None:
    """A batch's results share ``emitted_at``: a warm-up on a backlog of 8-frame batches is
    priced per frame of 8 (its models' costs were), probes one by one later do not move it."""
    trainer = LinkTrainer(SPECS, LinkStore(tmp_path), FAST, warmup_frames=3)
    assert trainer.batch_fill() == 1  # nothing yet: a frame alone
    data = truth(20)
    for i in range(20):
        at = 1.0 if i < 8 else 2.0 if i < 16 else 10.0 + i  # two batches of 8, 4 probes
        result = dataclasses.replace(
            probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}), emitted_at=at
        )
        assert trainer.add(result)
    assert trainer.batch_fill() == 8


def test_links_are_priced_per_frame_of_the_batch_the_models_were(
    saved_links: tuple[Path, LoadedLinks],
) -> None:
    """Timed one frame a call, links looked 30 times dearer against model costs measured on
    a backlog's batches, and the plan from links relearned there was infeasible."""
    from mlink.linkstore.linkcosts import synthesis_costs

    _, links = saved_links

    def per_frame(fill: int) -> float:  # a whole call: the ensemble and its dearest link
        link, ensemble = synthesis_costs(links.linkset, repeats=50, batches=3, fill=fill)
        return sum(
            c["ms"] + max(link[(s, t)]["ms"] for s in MODELS if s != t) for t, c in ensemble.items()
        )

    assert per_frame(32) < per_frame(1)


def test_trainer_relearns_once_above_the_lost_versions(tmp_path: Path) -> None:
    """The store lost v1-v4 (the control log named them): with ``retrain_every`` 0 the trainer
    trains once more, numbered above them, and not again while the new version is announced."""
    data = truth(20)
    trainer = LinkTrainer(SPECS, LinkStore(tmp_path), FAST, warmup_frames=20)
    trainer.announced(4)  # what a restarted trainer takes from the control log
    for i in range(19):
        trainer.add(probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}))
    assert not trainer.ready() and not trainer.ready(relearn=4)  # its buffer is short
    trainer.add(probe_result("s:19", {m: data[m][19] for m in MODELS}))
    assert not trainer.ready() and trainer.ready(relearn=4)
    trainer.number_after = 4
    assert train_and_save(trainer) == 5
    assert not trainer.ready(relearn=4)  # v5 trained: no second one before it is planned


def test_trainer_retrains_only_when_asked(tmp_path: Path) -> None:
    data = truth(40)
    rows = [{m: data[m][i] for m in MODELS} for i in range(40)]
    once = LinkTrainer(SPECS, LinkStore(tmp_path / "once"), FAST, warmup_frames=20)
    again = LinkTrainer(
        SPECS, LinkStore(tmp_path / "again"), FAST, warmup_frames=20, retrain_every=10
    )
    for trainer in (once, again):
        for i in range(20):
            trainer.add(probe_result(f"s:{i}", rows[i]))
        assert trainer.ready()
        assert train_and_save(trainer) == 1
        assert trainer.new_since_training == 0 and not trainer.ready()
        for i in range(20, 30):
            trainer.add(probe_result(f"s:{i}", rows[i]))
    assert not once.ready()
    assert again.ready()
    assert train_and_save(again) == 2 and again.store.current() == 2


def test_samples_that_come_during_a_training_count_towards_the_next() -> None:
    """The trainer agent goes on reading samples while links train; those a training did not
    take must call for the next retrain, not be forgotten when it saves."""
    data = truth(30)
    trainer = LinkTrainer(SPECS, LinkStore(Path("unused")), FAST, warmup_frames=20, retrain_every=3)
    for i in range(20):
        trainer.add(probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}))
    taken = trainer.new_since_training  # the job is taken here, then 4 more samples come
    for i in range(20, 24):
        trainer.add(probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}))
    trainer.saved(1, taken)
    assert trainer.new_since_training == 4 and trainer.ready()
    trainer.saved(2, 4)  # the next took them all
    assert trainer.new_since_training == 0 and not trainer.ready()
    trainer.add(probe_result("s:24", {m: data[m][24] for m in MODELS}))
    trainer.announced(7)  # a handover while it trained: counted from the announced version
    trainer.saved(8, 1)
    assert trainer.new_since_training == 0


def test_a_trainer_that_takes_over_counts_the_versions_announced_since_it_started(
    tmp_path: Path,
) -> None:
    """Audit: a worker's trainer took the announced links as trained only when its agent
    started; one started before v1 was trained elsewhere took over the samples partition
    later (a handover) and, with ``retrain_every`` 0, trained the links a second time."""
    data = truth(30)
    rows = [{m: data[m][i] for m in MODELS} for i in range(30)]
    once = LinkTrainer(SPECS, LinkStore(tmp_path / "once"), FAST, warmup_frames=10)
    again = LinkTrainer(
        SPECS, LinkStore(tmp_path / "again"), FAST, warmup_frames=10, retrain_every=10
    )
    for trainer in (once, again):
        trainer.announced(None)  # the control replay at start: no links yet
        trainer.announced(1)  # the holder of the samples partition trained v1, then stopped
        for i in range(10):  # the probes this worker gets once it holds the partition
            trainer.announced(1)
            trainer.add(probe_result(f"s:{i}", rows[i]))
        assert trainer.trained_versions == [1]
    assert not once.ready()  # train once: v1 is that once
    assert again.ready()  # 10 new probes since v1 was trained

    # a version trained elsewhere resets the count: the probes this worker buffered before it
    # (it held the partition before, another worker trained v2 since) are not new to v2
    for i in range(10, 19):
        again.add(probe_result(f"s:{i}", rows[i]))
    again.announced(2)
    again.add(probe_result("s:19", rows[19]))
    assert again.trained_versions == [1, 2] and again.new_since_training == 1
    assert not again.ready()
    # its own version, announced back to it, is no news: its count goes on
    assert again.saved(3) == 3 and again.new_since_training == 0
    again.add(probe_result("s:20", rows[20]))
    again.announced(3)
    assert again.trained_versions == [1, 2, 3] and again.new_since_training == 1


def test_a_retrain_after_a_handover_waits_for_a_warm_up_of_samples() -> None:
    """The new holder of the samples partition has only the probes since the handover: a
    retrain from ``retrain_every`` of them would replace links trained on the whole buffer of
    the worker before it."""
    data = truth(20)
    trainer = LinkTrainer(SPECS, LinkStore(Path("unused")), FAST, warmup_frames=10, retrain_every=4)
    trainer.announced(3)  # v3, trained by the worker that held the partition before
    for i in range(9):
        trainer.add(probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}))
        assert not trainer.ready(), i  # 4 new probes and more, but fewer than 10 samples
    trainer.add(probe_result("s:9", {m: data[m][9] for m in MODELS}))
    assert trainer.ready()


# -- controller ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_links(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedLinks]:
    store = LinkStore(tmp_path_factory.mktemp("links"))
    trainer = LinkTrainer(SPECS, store, FAST, warmup_frames=40)
    data = truth(40)
    for i in range(40):
        trainer.add(probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}, ms=1.0))
    version = train_and_save(trainer)
    assert version == 1 and store.current() == 1
    return store.root, load_bundle(store, version)


def test_saved_version_carries_what_the_controller_needs(
    saved_links: tuple[Path, LoadedLinks],
) -> None:
    root, links = saved_links
    assert links.version == 1 and set(links.linkset.models) == set(MODELS)
    assert links.model_costs == {m: {"ms": 1.0} for m in MODELS}
    assert set(links.link_costs) == {(s, t) for s in MODELS for t in MODELS if s != t}
    # a link's ms is a difference of two timings of a few microseconds each: on a loaded
    # machine every one of them can clip to 0, so only the whole call is sure to cost time
    assert all(c["ms"] >= 0 and c["memory_mb"] > 0 for c in links.link_costs.values())
    assert set(links.ensemble_costs) == set(MODELS)
    # the ensemble's part is the one-source call less a link, which can also clip to 0: only
    # a whole call (its ensemble and a link) is sure to cost time
    assert all(
        c["ms"] + max(links.link_costs[(s, t)]["ms"] for s in MODELS if s != t) > 0
        for t, c in links.ensemble_costs.items()
    )
    meta = LinkStore(root).load(1).meta.meta
    assert meta["n_samples"] == 40
    assert meta["synthesis_fill"] == 40  # the 40 samples share one emitted_at: one batch
    assert load_bundle(LinkStore(root), 1) is links  # cached per process
    # the saved link set synthesizes like the one the trainer trained
    real = truth(3, seed=5)
    out = links.linkset.synthesize("digit", {"parity": real["parity"], "value": real["value"]})
    assert np.asarray(out).shape == (3, 5)


def test_a_link_version_that_was_missing_loads_once_it_is_there(
    saved_links: tuple[Path, LoadedLinks], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = saved_links
    saved = LinkStore(root).load(1)
    store = LinkStore(tmp_path / "late")
    with pytest.raises(StoreError):
        load_bundle(store, 1)  # a worker hears of version 1 before its files are there
    store.save(saved.tensors, saved.meta.meta)
    with pytest.raises(StoreError):
        load_bundle(store, 1)  # remembered for a while: not re-read for every frame
    monkeypatch.setattr(bundle, "BAD_RETRY_S", 0.0)
    assert load_bundle(store, 1).version == 1


def test_a_version_that_fails_to_read_in_any_way_is_unusable_not_an_escaping_error(
    saved_links: tuple[Path, LoadedLinks], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: an OSError (an NFS or object-store hiccup) or an AttributeError from oddly
    shaped metadata escaped the loader, and dead-lettered the controller's control messages."""
    root, _ = saved_links
    saved = LinkStore(root).load(1)
    store = LinkStore(tmp_path / "flaky")
    store.save(saved.tensors, saved.meta.meta)

    def eio(self, version):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(LinkStore, "load", eio)
    with pytest.raises(StoreError, match="Input/output error"):
        load_bundle(store, 1)
    settings = Settings(
        name="p", budget={"fraction": 0.5}, links=LinkSettings(store=str(store.root))
    )
    mlink = MLink(settings, [Model(name=m, fn=len, spec=SPECS[m]) for m in MODELS])
    assert mlink.links(1) is None and "Input/output error" in mlink.unusable[1]
    monkeypatch.undo()
    monkeypatch.setattr(bundle, "BAD_RETRY_S", 0.0)
    assert mlink.links(1) is not None  # read again once the store answers


def test_a_slow_read_of_one_version_does_not_hold_up_a_cached_one(
    saved_links: tuple[Path, LoadedLinks], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: one global lock covered the whole read, so the frame path's lookup of a cached
    version waited for the controller's read of a new one."""
    root, _ = saved_links
    store = LinkStore(root)
    load_bundle(store, 1)
    reading, release = threading.Event(), threading.Event()
    real = bundle._load

    def slow(store_, version):
        reading.set()
        release.wait(30)
        return real(store_, version)

    monkeypatch.setattr(bundle, "_load", slow)
    failed: list[BaseException] = []

    def read_two() -> None:
        try:
            load_bundle(store, 2)
        except StoreError as exc:  # no version 2: what matters is that it was slow
            failed.append(exc)

    reader = threading.Thread(target=read_two)
    reader.start()
    try:
        assert reading.wait(10)
        started = time.monotonic()
        assert load_bundle(store, 1).version == 1
        assert time.monotonic() - started < 5.0  # not the 30 s the other read waits
    finally:
        release.set()
        reader.join(30)
    assert failed and not bundle._loading


def test_failed_link_versions_named_by_records_do_not_pile_up(
    saved_links: tuple[Path, LoadedLinks], tmp_path: Path
) -> None:
    root, _ = saved_links
    settings = Settings(name="p", budget={"fraction": 0.5}, links=LinkSettings(store=str(root)))
    mlink = MLink(settings, [Model(name=m, fn=len, spec=SPECS[m]) for m in MODELS])
    for version in range(2, 2 + runtime.UNUSABLE_KEPT + 500):  # a record can name any version
        assert mlink.links(version) is None
    assert len(mlink.unusable) == runtime.UNUSABLE_KEPT
    assert len(bundle._bad) <= bundle._BAD_KEPT
    assert set(mlink.metrics) == {"bad_link_versions"}
    assert mlink.links(1) is not None and mlink.stream_links(1) is None  # not fitted for streams
    other = MLink(settings, [Model(name=m, fn=len, spec=SPECS[m]) for m in MODELS[:2]])
    assert other.links(1) is None and other.linksets([1]) == {}
    assert other.unusable[1].startswith("trained for other models than this config's")
    assert other.other_models[1] == "the links cover value, which this config does not have"
    grown = [Model(name=m, fn=len, spec=SPECS[m]) for m in MODELS]
    grown.append(Model(name="extra", fn=len, spec=VectorSpec(3, "softmax")))
    added = MLink(settings, grown)  # its links would leave "extra" out on every frame
    assert added.links(1) is None
    assert added.other_models[1] == "this config has extra, which the links do not cover"
    plan = ControlMessage(
        kind="active_set", epoch=1, issued_at=1.0, active=("digit",), link_version=1
    )
    assert added.state.apply(plan).status == "applied"
    assert added.state.plan(5).active == ("digit",)
    assert added.plan(5).active == added.state.models  # what it cannot synthesize, it runs
    pruned = ControlMessage(  # a version the store no longer holds (pruned, or lost)
        kind="active_set", epoch=2, issued_at=2.0, active=("digit",), link_version=9_999
    )
    assert mlink.state.apply(pruned).status == "applied" and mlink.links(9_999) is None
    assert mlink.plan(5).active == mlink.state.models  # runs them all rather than leave holes
    respecced = [Model(name=m, fn=len, spec=SPECS[m]) for m in MODELS[:2]]
    respecced.append(Model(name="value", fn=len, spec=VectorSpec(2, "linear")))
    assert MLink(settings, respecced).links(1) is None


def test_decide_picks_the_best_active_set_within_the_budget(
    saved_links: tuple[Path, LoadedLinks],
) -> None:
    _, links = saved_links
    declared = {m: {"ms": c} for m, c in COSTS.items()}

    def decide_for(budget: dict[str, float], epoch: int, selector: str = "auto"):
        return decide(MODELS, declared, links, budget, epoch, selector, probe_every=6)

    everything = decide_for({"fraction": 1.0}, epoch=4)
    assert everything.kind == "active_set" and everything.epoch == 4
    assert everything.active == MODELS  # running all of them is the best and fits exactly
    assert everything.link_version == 1 and everything.probe_every == 6
    assert everything.budget == {"fraction": 1.0}
    assert everything.extra["objective"] == pytest.approx(1.0)
    # 10% of 16 ms leaves room for parity (1 ms) and its links only
    small = decide_for({"fraction": 0.1}, epoch=5)
    assert small.active == ("parity",)
    assert small.extra["cost"]["ms"] <= 1.6 and small.extra["objective"] < 1.0
    assert small.extra["predicted"]["parity"] == 1.0
    # what it was priced on, as stream plans say: `mlink status` shows the fraction in ms
    assert small.extra["budget_ms"] == pytest.approx(1.6)
    assert small.extra["model_ms"] == {m: pytest.approx(c) for m, c in COSTS.items()}
    assert 0.0 <= small.extra["predicted"]["digit"] <= 1.0
    greedy = decide_for({"fraction": 0.1}, epoch=5, selector="greedy")
    assert greedy.active == ("parity",)
    with pytest.raises(InfeasibleBudget):
        decide_for({"ms": 0.5}, epoch=6)  # cheaper than any single model


def test_costs_and_budgets_resolve_declared_over_measured(tmp_path: Path) -> None:
    config = pipeline_config(tmp_path, fraction=0.25)
    measured = {"digit": {"ms": 99.0, "memory_mb": 3.0}, "parity": {"memory_mb": 1.0}}
    costs = model_costs(MODELS, config.declared_costs(), measured)
    assert costs == {
        "digit": {"ms": 10.0, "memory_mb": 3.0},
        "parity": {"ms": 1.0, "memory_mb": 1.0},
        "value": {"ms": 5.0},
    }
    assert config.budget_dict() == {"fraction": 0.25}
    assert resolve_budget({"fraction": 0.25, "memory_mb": 4.0}, full_cost(costs)) == {
        "ms": 4.0,
        "memory_mb": 4.0,
    }
    assert model_costs(MODELS, {}, {"digit": {"ms": 2.0}}) == {
        "digit": {"ms": 2.0},
        "parity": {"ms": 0.0},
        "value": {"ms": 0.0},
    }


def test_a_models_typical_cost_does_not_jump_between_cameras_of_different_sizes() -> None:
    small, large = [5.0] * 10, [50.0] * 10  # a 176x144 camera's frames and a 720p camera's
    assert typical_ms(small + large) == pytest.approx(27.5)
    # one frame more from either camera: a median would be 5 or 50, this barely moves
    assert typical_ms(small + large + [5.0]) == pytest.approx((9 * 5 + 8 * 50) / 17)
    assert typical_ms(small + large + [50.0]) == pytest.approx((8 * 5 + 9 * 50) / 17)
    assert typical_ms([10.0] * 9 + [1000.0]) == 10.0  # a first call or a pause is cut
    with pytest.raises(ValueError, match="at least one timing"):
        typical_ms([])


def test_a_re_plan_pays_back_the_overrun_of_the_run_so_far() -> None:
    assert next_plan_budget(100.0, 300.0, 30) == 90.0  # 300 ms over: 10 ms a frame for 30
    assert next_plan_budget(100.0, -500.0, 10) == 100.0  # an underrun is not spent later
    assert next_plan_budget(100.0, 1e6, 1) == 0.0
    with pytest.raises(ValueError, match="frames must be >= 1"):
        next_plan_budget(100.0, 1.0, 0)


def test_a_short_plan_after_a_long_one_keeps_the_paybacks_deadline() -> None:
    full, budget, every = 50.0, 10.0, 8  # probes alone cost full / every = 6.25 ms a frame
    allowance = (budget - full / every) / (1 - 1 / every)
    probe = [i % every == 0 for i in range(408)]
    cost = [full if p else allowance * 1.04 for p in probe[:400]]  # plan 1: 4% over, 400 frames
    frames = payback_frames(399, 0, 0)
    first = next_plan_budget(
        budget, non_probe_overrun(cost, probe[:400], budget, full, every), frames
    )
    assert frames == 400 and first == pytest.approx(budget - 0.04 * allowance * 350 / 400)
    spend = (first - full / every) / (1 - 1 / every)
    cost += [full if p else spend for p in probe[400:]]  # plan 2: cut off by the guard at 408
    frames = payback_frames(407, 400, 399 + 400)
    overrun = non_probe_overrun(cost, probe, budget, full, every)
    second = next_plan_budget(budget, overrun, frames)
    assert frames == 392 and full / every < first - 0.01 < second < budget
    # over plan 2's 8 frames alone the run's overrun asked for less than the probes cost
    assert next_plan_budget(budget, overrun, 8) < full / every


def test_the_overrun_leaves_out_probes_which_follow_the_stream_not_the_plan() -> None:
    cost, probe = [100.0, 1000.0, 100.0, 160.0], [False, True, False, False]
    # budget 200 a frame with one probe (1000 ms) in 10: 1000/9 ms for the other frames
    assert non_probe_overrun(cost, probe, 200.0, 1000.0, 10) == pytest.approx(360 - 1000 / 3)
    assert non_probe_overrun(cost, [False] * 4, 200.0, 1000.0, 0) == pytest.approx(560.0)


def test_live_agreement_scores_the_plan_on_probe_frames() -> None:
    from mlink.operators.live import LiveAgreement, probe_agreement

    digit = np.random.default_rng(0).integers(0, 10, 120)
    specs = {"digit": VectorSpec(10, "softmax"), "parity": VectorSpec(2, "softmax")}
    outputs = {
        "digit": [np.eye(10, dtype=np.float32)[d] for d in digit],
        "parity": [np.eye(2, dtype=np.float32)[d % 2] for d in digit],
    }
    linkset = LinkSet.train(specs, outputs, TrainConfig(epochs=40), progress=False)
    right = FrameResult(
        frame_id="s:0",
        stream_id="s",
        seq=0,
        epoch=1,
        degraded=False,
        emitted_at=0.0,
        results=(
            ModelResult(model="digit", output=outputs["digit"][0], status="executed"),
            ModelResult(model="parity", output=outputs["parity"][0], status="executed"),
        ),
    )
    wrong_parity = np.eye(2, dtype=np.float32)[1 - digit[0] % 2]
    wrong = dataclasses.replace(
        right,
        frame_id="s:1",
        results=(right.results[0], dataclasses.replace(right.results[1], output=wrong_parity)),
    )
    assert probe_agreement(right, linkset, ["digit"]) == {"parity": 1.0}
    assert probe_agreement(wrong, linkset, ["digit"]) == {"parity": 0.0}
    assert probe_agreement(right, linkset, []) == {}

    live = LiveAgreement()
    live.add((1, 1), {"parity": 1.0})
    live.add((1, 1), {"parity": 0.0})
    assert live.means() == {"parity": 0.5} and live.probes == 2
    live.add((2, 1), {"parity": 1.0})  # a new plan starts a new mean
    assert live.means() == {"parity": 1.0} and live.probes == 1


def test_a_plans_link_version_is_loaded_off_the_event_loop_before_frames_name_it(
    saved_links: tuple[Path, LoadedLinks],
) -> None:
    """Review: the first frame naming a new version loaded it on the event loop."""
    import asyncio

    from mlink.operators.control_operators import prefetch_links

    root, _ = saved_links
    settings = Settings(name="p", budget={"fraction": 0.5}, links=LinkSettings(store=str(root)))
    mlink = MLink(settings, [Model(name=m, fn=len, spec=SPECS[m]) for m in MODELS])
    bundle._loaded.pop((str(LinkStore(root).root), 1), None)  # as a worker that never loaded it

    async def on_the_loop() -> LoadedLinks | None:
        return await prefetch_links(mlink, 1)

    assert asyncio.run(on_the_loop()) is not None
    assert (str(LinkStore(root).root), 1) in bundle._loaded  # frames now find it cached
    mlink.close()


def test_the_quick_first_links_are_the_same_job_at_fewer_epochs() -> None:
    """A cold stream pipeline's first links train at ``first_epochs`` so its hold ends in
    seconds; only when that is shorter than what the config asks for."""
    data = truth(30)
    trainer = LinkTrainer(
        SPECS, LinkStore(Path("unused")), TrainConfig(epochs=100, ensemble_epochs=40), 20
    )
    for i in range(20):
        trainer.add(probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}))
    job = TrainingJob.from_trainer(trainer)
    quick = job.quick(5)
    assert quick is not None
    assert (quick.config.epochs, quick.config.ensemble_epochs) == (5, 5)
    assert quick.config.lr == job.config.lr and quick.outputs is job.outputs
    assert (quick.store_root, quick.number_after) == (job.store_root, job.number_after)
    assert job.quick(60).config.ensemble_epochs == 40  # never more than the config's
    assert job.quick(0) is None and job.quick(100) is None and job.quick(500) is None


def test_a_quick_first_version_announced_before_a_handover_does_not_count_as_trained() -> None:
    """Its worker stopped before the full links: this trainer trains them from its own warm-up
    sized buffer, and counts a full version another worker announces as before."""
    data = truth(30)
    trainer = LinkTrainer(SPECS, LinkStore(Path("unused")), FAST, warmup_frames=20)
    trainer.announced(3, quick=True)
    assert not trainer.trained_versions and not trainer.ready()
    for i in range(20):
        trainer.add(probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}))
    assert trainer.ready()
    trainer.announced(4)
    assert trainer.trained_versions == [4] and not trainer.ready()


def test_the_quick_first_version_leaves_the_full_links_owed() -> None:
    """The full training after it may fail (a store that refuses a write): with
    ``retrain_every: 0`` the quick links would then have stayed in force for good."""
    data = truth(30)
    trainer = LinkTrainer(SPECS, LinkStore(Path("unused")), FAST, warmup_frames=20)
    for i in range(20):
        trainer.add(probe_result(f"s:{i}", {m: data[m][i] for m in MODELS}))
    assert trainer.saved(1, 0, quick=True) == 1
    assert not trainer.trained_versions and trainer.ready()
    trainer.saved(2, 20)
    assert trainer.trained_versions == [2] and not trainer.ready()
