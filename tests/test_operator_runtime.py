"""The operators' library pieces without a broker: models and settings, the per-process runtime,
batched result building, the dead-letter step, the split layout's credit window, and dispatching
planned models with timeouts."""

from __future__ import annotations

import asyncio
import re
import time
from types import SimpleNamespace
from typing import Any

import faust
import numpy as np
import pytest
import torch

from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.training import TrainConfig
from mlink.operators import LinkSettings, MLink, Model, Settings, SettingsError
from mlink.operators.dead_letters import DeadLetters
from mlink.operators.dispatch import run_planned
from mlink.operators.fetch_wait import cap_fetch_wait
from mlink.operators.joiner import Executed, FrameWork, build_results
from mlink.operators.library_threads import limit_library_threads
from mlink.operators.recent import RecentIds
from mlink.operators.split_operators import Credits
from mlink.topics.codec import decode_record
from mlink.topics.records import DeadLetter, DecodeError, Plan
from mlink.topics.specs import VectorSpec

SPECS = {"digit": VectorSpec(5, "softmax"), "parity": VectorSpec(2, "softmax")}


def truth(n: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    digit = np.random.default_rng(seed).integers(0, 5, n)
    return {
        "digit": [np.eye(5, dtype=np.float32)[d] for d in digit],
        "parity": [np.eye(2, dtype=np.float32)[d % 2] for d in digit],
    }


# -- models and settings ---------------------------------------------------------------------


class Mean(torch.nn.Module):
    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return frame.float().mean().reshape(1) / 255.0


def test_a_torch_module_is_a_model_run_in_eval_mode_without_grad() -> None:
    module = Mean().train()
    model = Model(name="mean", fn=module, spec=VectorSpec(1, "linear"))
    call = model.make()
    out = call(np.full((4, 4), 51, dtype=np.uint8))
    assert isinstance(out, np.ndarray) and out.shape == (1,) and out[0] == pytest.approx(0.2)
    assert not module.training


def test_models_are_built_lazily_and_validated() -> None:
    built = []

    def build() -> Any:
        built.append(1)
        return lambda frame: np.zeros(1, np.float32)

    model = Model(name="m", build=build, spec=VectorSpec(1, "linear"), cost={"ms": 2})
    assert not built and model.cost == {"ms": 2}
    model.make()
    assert built == [1]
    with pytest.raises(SettingsError, match="exactly one"):
        Model(name="m", spec=VectorSpec(1, "linear"))
    with pytest.raises(SettingsError, match="letters"):
        Model(name="bad name\n", fn=len, spec=VectorSpec(1, "linear"))
    with pytest.raises(SettingsError, match="cost keys"):
        Model(name="m", fn=len, spec=VectorSpec(1, "linear"), cost={"gpu": 1})
    with pytest.raises(SettingsError, match="not a callable"):
        Model(name="m", build=lambda: 3, spec=VectorSpec(1, "linear")).make()


def test_settings_reject_unknown_budgets_and_runtime_needs_two_models(tmp_path) -> None:
    with pytest.raises(SettingsError, match="unknown keys"):
        Settings(name="p", budget={"gpus": 1})
    with pytest.raises(SettingsError, match="at least one"):
        Settings(name="p", budget={})
    settings = Settings(name="p", budget={"fraction": 0.5}, links=LinkSettings(store=str(tmp_path)))
    one = [Model(name="a", fn=len, spec=VectorSpec(1, "linear"))]
    with pytest.raises(SettingsError, match="two models"):
        MLink(settings, one)
    with pytest.raises(SettingsError, match="unique"):
        MLink(settings, one * 2)


def test_recent_ids_forget_the_oldest() -> None:
    recent = RecentIds(3)
    for i in range(5):
        recent.add(str(i))
    assert "0" not in recent and "1" not in recent and "4" in recent and len(recent) == 3


# -- building results in batches --------------------------------------------------------------


@pytest.fixture(scope="module")
def linkset() -> LinkSet:
    return LinkSet.train(SPECS, truth(60), TrainConfig(epochs=5, ensemble_epochs=5), progress=False)


def work(i: int, plan: Plan | None, **outcomes: Executed) -> FrameWork:
    return FrameWork(f"s:{i}", "s", i, float(i), plan, dict(outcomes))


def test_batched_synthesis_equals_synthesis_frame_by_frame(linkset: LinkSet) -> None:
    data = truth(12, seed=3)
    plan = Plan(epoch=1, active=("parity",), link_version=7)
    works = [work(i, plan, parity=Executed(data["parity"][i], 1.0)) for i in range(12)]
    results = build_results(works, list(SPECS), {7: linkset}, now=5.0, estimates={"digit": 0.8})
    for i, result in enumerate(results):
        digit = next(r for r in result.results if r.model == "digit")
        alone = linkset.synthesize("digit", {"parity": [data["parity"][i]]})[0]
        assert digit.status == "synthesized" and digit.sources == ("parity",)
        assert digit.link_version == 7 and digit.agreement == 0.8 and digit.error is None
        assert np.allclose(digit.output, alone, atol=1e-6)
        assert not result.degraded and not result.probe


def test_a_missing_link_version_leaves_inactive_models_missing(linkset: LinkSet) -> None:
    data = truth(1)
    plan = Plan(epoch=1, active=("parity",), link_version=3)
    (result,) = build_results(
        [work(0, plan, parity=Executed(data["parity"][0], 1.0))], list(SPECS), {}, now=1.0
    )
    assert {r.model: r.status for r in result.results} == {
        "digit": "missing",
        "parity": "executed",
    }
    assert not result.degraded  # digit was not expected to run


def test_a_frame_that_could_not_run_names_the_reason(linkset: LinkSet) -> None:
    plan = Plan(epoch=0, active=("digit", "parity"), probe=True)
    failed = Executed(None, None, "frame decode failed: junk")
    (result,) = build_results([work(0, plan, digit=failed, parity=failed)], list(SPECS), {}, 1.0)
    assert result.degraded and result.probe
    assert all(r.status == "missing" and "junk" in r.error for r in result.results)
    assert all(r.cost_ms is None for r in result.results)  # never ran: it cost nothing


def test_a_model_call_that_failed_says_what_it_took() -> None:
    plan = Plan(epoch=1, active=("digit",))
    slow = Executed(None, 2000.0, "timed out after 2 s", cpu_ms=1900.0)
    (result,) = build_results([work(0, plan, digit=slow)], list(SPECS), {}, 1.0)
    digit = next(r for r in result.results if r.model == "digit")
    assert digit.status == "missing" and digit.cost_ms == 1900.0 and result.degraded


# -- dead letters ----------------------------------------------------------------------------


def event(value: bytes, offset: int = 7) -> SimpleNamespace:
    message = SimpleNamespace(topic="t", partition=1, offset=offset)
    return SimpleNamespace(key=b"k", value=value, message=message)


def test_the_dead_letter_step_splits_good_records_from_bad_ones() -> None:
    sent: list[bytes] = []
    counts: dict[str, int] = {}

    async def send(key: bytes | None, value: bytes) -> None:
        sent.append(value)

    class Counts(dict):
        def __missing__(self, key: str) -> int:
            return 0

    counts = Counts()
    dead = DeadLetters(send, counts, max_value_bytes=10)

    def decode(e: Any) -> int:
        if e.value == b"bad":
            raise DecodeError("not a number")
        if e.value.startswith(b"bug"):
            raise KeyError("surprise")
        return int(e.value)

    events = [event(b"1"), event(b"bad", 8), event(b"2"), event(b"bug" * 5, 9)]
    good = asyncio.run(dead.decode(events, decode, "stage"))
    assert [r for _, r in good] == [1, 2]
    letters = [decode_record(v, DeadLetter) for v in sent]
    assert [(d.offset, d.stage) for d in letters] == [(8, "stage"), (9, "stage")]
    assert letters[0].reason == "not a number" and letters[0].traceback is None  # bad input
    assert "KeyError" in letters[1].traceback  # an unexpected failure keeps where it happened
    assert letters[1].value == (b"bug" * 5)[:10] and "truncated from 15 bytes" in letters[1].reason
    assert counts["dead_letters:stage"] == 2


def test_the_guard_dead_letters_and_survives_a_failing_send() -> None:
    async def broken(key: bytes | None, value: bytes) -> None:
        raise ConnectionError("broker down")

    counts: dict[str, int] = {"dead_letters:stage": 0, "dead_letters_unsent": 0}
    dead = DeadLetters(broken, counts)

    async def run() -> bool:
        async with dead.guard(event(b"x"), "stage"):
            raise RuntimeError("boom\nforged log line")
        return True

    assert asyncio.run(run())  # the exception was contained
    assert counts == {"dead_letters:stage": 1, "dead_letters_unsent": 1}


# -- the split layout's credit window ---------------------------------------------------------


def test_credits_bound_the_frames_in_flight_and_expire() -> None:
    async def scenario() -> list[str]:
        credits = Credits(window=2, expire_s=0.4)
        order: list[str] = []
        await credits.take("a")
        await credits.take("b")

        async def third() -> None:
            await credits.take("c")
            order.append("c")

        task = asyncio.ensure_future(third())
        await asyncio.sleep(0.05)
        order.append("blocked")
        await credits.give_back(["a"])
        await task
        await asyncio.wait_for(credits.take("d"), 2.0)  # "b" expires after 0.4 s
        order.append("d")
        return order

    started = time.monotonic()
    assert asyncio.run(scenario()) == ["blocked", "c", "d"]
    assert time.monotonic() - started >= 0.3


# -- dispatching planned models ----------------------------------------------------------------


def test_planned_models_run_once_per_batch_and_a_slow_one_times_out(tmp_path) -> None:
    calls: list[int] = []

    def fast(frame: np.ndarray) -> np.ndarray:
        calls.append(1)
        return np.array([0.5, 0.5], np.float32)

    def slow(frame: np.ndarray) -> np.ndarray:
        time.sleep(1.0)
        return np.eye(5, dtype=np.float32)[0]

    models = [
        Model(name="parity", fn=fast, spec=SPECS["parity"]),
        Model(name="digit", fn=slow, spec=SPECS["digit"], timeout_s=0.2),
    ]
    mlink = MLink(
        Settings(name="p", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path))), models
    )
    image = np.zeros((2, 2), np.uint8)

    async def run() -> list[dict[str, Executed]]:
        await mlink.build_models()
        return await run_planned(mlink, [(image, ["parity", "digit"]), (image, ["parity"])])

    outcomes = asyncio.run(run())
    mlink.close()
    assert len(calls) == 2 and all(o["parity"].error is None for o in outcomes)
    assert outcomes[0]["digit"].error == "model digit timed out after 0.2 s"
    assert "digit" not in outcomes[1]
    assert mlink.metrics["failed:digit"] == 1 and mlink.metrics["executed:parity"] == 2
    # calls beside frames: one at a time, parity was called once per frame (an SRE's audit)
    calls_of = {s.labels["model"]: s.value for s in mlink.prom.model_calls.collect()[0].samples
                if s.name.endswith("_total")}  # fmt: skip
    assert calls_of == {"parity": 2, "digit": 1}


def test_the_log_names_why_a_model_failed_whichever_frame_of_the_batch_it_was(
    tmp_path, caplog
) -> None:
    """It logged the first frame's error: 'model flaky failed on 1 frames: None'."""

    def flaky(frame: np.ndarray) -> np.ndarray:
        if frame[0, 0]:
            raise RuntimeError("bad frame")
        return np.array([0.5, 0.5], np.float32)

    models = [
        Model(name="flaky", fn=flaky, spec=SPECS["parity"]),
        Model(name="other", fn=flaky, spec=SPECS["parity"]),
    ]
    mlink = MLink(
        Settings(name="p", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path))), models
    )
    good, bad = np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8)

    async def run() -> None:
        await mlink.build_models()
        await run_planned(mlink, [(good, ["flaky"]), (bad, ["flaky"])])

    with caplog.at_level("WARNING", logger="mlink.worker"):
        asyncio.run(run())
    mlink.close()
    (line,) = [r.getMessage() for r in caplog.records if "failed on" in r.getMessage()]
    assert "bad frame" in line and not line.endswith("None")
    assert "failed on 1 of the 2 frames of a call" in line  # it read "failed on 1 frames"


def test_the_fetch_wait_cap_is_opt_in_per_app() -> None:
    capped, plain = faust.App("capped-app"), faust.App("plain-app")
    cap_fetch_wait(capped, 25)
    assert capped._mlink_fetch_max_wait_ms == 25
    assert not hasattr(plain, "_mlink_fetch_max_wait_ms")
    with pytest.raises(ValueError):
        cap_fetch_wait(plain, -1)


def test_an_unusable_link_version_degrades_the_result_with_the_reason() -> None:
    data = truth(1)
    plan = Plan(epoch=2, active=("parity",), link_version=4)
    (result,) = build_results(
        [work(0, plan, parity=Executed(data["parity"][0], 1.0))],
        list(SPECS),
        {},
        now=1.0,
        unusable={4: "sha256 of tensors.safetensors does not match"},
    )
    digit = next(r for r in result.results if r.model == "digit")
    assert result.degraded and digit.status == "missing"
    assert digit.error == "link version 4 unusable: sha256 of tensors.safetensors does not match"


def test_a_worker_gives_opencv_and_torch_one_thread_once_its_models_are_built(tmp_path) -> None:
    """A model's price is its calling thread's CPU time: a library pool working on other cores
    would go uncounted (docs/model-execution.md). ``model_threads=None`` keeps the defaults."""
    import cv2

    before = (cv2.getNumThreads(), torch.get_num_threads())
    cv2.setNumThreads(2)
    torch.set_num_threads(2)
    try:
        for threads, expect in ((None, 2), (1, 1)):
            settings = Settings(
                name="t",
                budget={"fraction": 1},
                links=LinkSettings(store=str(tmp_path)),
                model_threads=threads,
            )
            models = [Model(name=m, fn=lambda f: f, spec=spec) for m, spec in SPECS.items()]
            mlink = MLink(settings, models)
            asyncio.run(mlink.build_models())
            mlink.close()
            assert (cv2.getNumThreads(), torch.get_num_threads()) == (expect, expect)
        assert limit_library_threads(None) == {}
        with pytest.raises(ValueError, match="int >= 1"):
            limit_library_threads(0)
        with pytest.raises(SettingsError, match="model_threads"):
            Settings(name="t", budget={"fraction": 1}, model_threads=0)
    finally:
        cv2.setNumThreads(before[0])
        torch.set_num_threads(before[1])


def test_a_saved_link_version_whose_announcement_fails_is_announced_later_in_order():
    """Review: the trainer counted a version as trained once saved and sent its announcement
    only once; when that send failed, no worker ever heard of the links."""
    import asyncio

    from mlink.operators.trainer_operator import announce_pending

    sent: list[int] = []
    down = {"sends": 1}

    async def send(version: int) -> None:
        if down["sends"]:
            down["sends"] -= 1
            raise ConnectionError("broker not reachable")
        sent.append(version)

    pending = [3]
    assert asyncio.run(announce_pending(pending, send)) is False
    assert pending == [3] and sent == []
    pending.append(4)  # trained again meanwhile
    assert asyncio.run(announce_pending(pending, send)) is True
    assert pending == [] and sent == [3, 4]


def test_the_controller_tries_a_link_version_again_with_backoff_while_it_is_wanted():
    """Review: a version that failed to load once (a shared store not visible yet) was never
    planned from: nothing else asks the controller again, and the pipeline stayed in warm-up."""
    import asyncio

    from mlink.operators.controller_agent import retry_with_backoff

    waits: list[float] = []
    outcomes = iter([False, False, False, True])

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def attempt() -> bool:
        return next(outcomes)

    assert asyncio.run(retry_with_backoff(attempt, lambda: True, 31.0, 100.0, sleep)) is True
    assert waits == [31.0, 62.0, 100.0, 100.0]
    waits.clear()  # a newer version, or a plan that uses it: stop asking
    assert asyncio.run(retry_with_backoff(attempt, lambda: False, 31.0, 100.0, sleep)) is False
    assert waits == [31.0]


def test_a_model_whose_build_raises_is_named_in_the_start_error(tmp_path) -> None:
    from mlink.operators.isolation import ModelStartError

    def load_net() -> Any:
        raise FileNotFoundError("weights.pt not found")

    settings = Settings(name="t", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path)))
    (first, spec), *_ = SPECS.items()
    models = [Model(name="net", build=load_net, spec=spec), Model(name=first, fn=len, spec=spec)]
    mlink = MLink(settings, models)
    try:  # the log said only "FileNotFoundError: weights.pt not found"
        with pytest.raises(ModelStartError, match=r"model 'net' could not be built: FileNotF"):
            asyncio.run(mlink.build_models())
    finally:
        mlink.close()


def test_attach_warns_about_an_app_that_buffers_a_backlog(tmp_path, caplog) -> None:
    from mlink.operators import attach, backlog_settings
    from mlink.operators.attach import buffer_warning

    settings = Settings(name="t", budget={"fraction": 1}, links=LinkSettings(store=str(tmp_path)))
    models = [Model(name=m, fn=len, spec=spec) for m, spec in SPECS.items()]
    buffers = faust.App("buffers", store="memory://")
    why = buffer_warning(buffers, settings)  # faust's defaults: 4096 buffered
    assert why is not None and "backlog_settings(settings)" in why
    kept = faust.App("kept", store="memory://", **backlog_settings(settings))
    assert kept.conf.broker_max_poll_records == settings.batch_size
    assert buffer_warning(kept, settings) is None
    with caplog.at_level("WARNING", logger="mlink.worker"):
        attach(buffers, MLink(settings, models))
        attach(kept, MLink(settings, models))
        assert "backlog" not in caplog.text  # not at import, before faust's log format
        # but once the worker starts: a start-up task of its own, the one task kept lacks
        assert len(buffers._app_tasks) == len(kept._app_tasks) + 1
        asyncio.run(buffers._app_tasks[0]())  # attach adds it first
    assert caplog.text.count("backlog_settings(settings)") == 1


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ({"memory_mb": 100.0}, "needs cost.memory_mb on every model; missing on ['digit'"),
        ({"fraction": 0.5, "target_agreement:zzz": 0.9}, "'target_agreement:zzz' names an unkno"),
    ],
)
def test_embedded_settings_refuse_the_budgets_a_config_refuses(tmp_path, budget, says) -> None:
    """A new user's audit: the YAML refused these, MLink(settings, models) planned on them (a
    memory budget with every model at 0 MB; a target refused only after the first links)."""
    settings = Settings(name="t", budget=budget, links=LinkSettings(store=str(tmp_path)))
    models = [Model(name=m, fn=len, spec=spec) for m, spec in SPECS.items()]
    with pytest.raises(SettingsError, match=re.escape(says)):
        MLink(settings, models)
    with pytest.raises(SettingsError, match="models is a sequence of Model"):
        MLink(settings, {m.name: m for m in models})  # type: ignore[arg-type]
