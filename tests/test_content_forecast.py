"""A plan's estimate re-weighted to the content its active models see (no labels needed)."""

from __future__ import annotations

import numpy as np
import pytest

from mlink.linkstore.content_forecast import (
    MAX_FIRING,
    ContentForecast,
    ContentTable,
    content_table,
    frame_signature,
    plan_content_forecast,
    signatures,
)
from mlink.linkstore.crossfit import cross_fit, fit_and_score
from mlink.topics.specs import BoxesSpec, VectorSpec
from tests.test_crossfit import FAST, SPECS, outputs

BOX = np.array([[0.1, 0.1, 0.4, 0.5, 0.9]], dtype=np.float32)
NONE = np.zeros((0, 5), dtype=np.float32)


def table(**rows: tuple[float, ...]) -> ContentTable:
    """Two models run; ``rows`` are the synthesized ones' agreements per signature 0..3, their
    overall estimate the first number."""
    return ContentTable(
        ("d",),
        2,
        {m: r[0] for m, r in rows.items()},
        {m: r[1:] for m, r in rows.items()},
        (True, True, False, False),
    )


def test_a_table_weighs_each_signatures_agreement_by_its_share_of_the_frames_seen():
    t = table(a=(0.6, 1.0, 0.4, 0.6, 0.6), b=(0.8, 0.8, 0.8, 0.8, 0.8))
    # no frame seen yet: the plan's estimate, (2 runs + 0.6 + 0.8) / 4
    assert t.forecast([0, 0, 0, 0]) == ContentForecast(0.85, 0.0, 0.85)
    # three quarters of the frames show signature 1, a quarter signature 2, which the scored
    # frames never had: its quarter is forecast by the overall mean, and is unseen
    got = t.forecast([0, 3, 1, 0])
    synthesized = (0.75 * 0.4 + 0.25 * 0.6) + 0.8
    assert got.value == pytest.approx((2 + synthesized) / 4)
    assert got.unseen == pytest.approx(0.25)
    assert got.floor == pytest.approx((2 + 0.75 * 0.4 + 0.75 * 0.8) / 4)  # the quarter scores 0
    # only scored content: value and floor agree
    quiet = t.forecast([4, 0, 0, 0])
    assert quiet == ContentForecast(pytest.approx((2 + 1.8) / 4), 0.0, pytest.approx(0.95))


def test_a_table_round_trips_and_refuses_what_a_record_should_not_say():
    t = table(a=(0.6, 1.0, 0.4, 0.6, 0.6))
    models = ["d", "a", "r1", "r2"]
    assert ContentTable.from_meta(t.to_meta(), models) == t
    bad = [
        {**t.to_meta(), "overall": {"a": 5.0}},  # an agreement of 5
        {**t.to_meta(), "by_signature": {"a": [0.5] * 1000}},  # not one value per signature
        {**t.to_meta(), "detectors": ["/etc/passwd"]},  # a model the pipeline does not have
        {**t.to_meta(), "runs": 2**40},
        {**t.to_meta(), "seen": [True]},
        {"runs": 1},
        "garbage",
    ]
    for meta in bad:
        with pytest.raises(ValueError):
            ContentTable.from_meta(meta, models)


def test_signatures_count_active_detectors_that_find_anything():
    specs = {f"d{i}": BoxesSpec(max_boxes=2) for i in range(5)} | {"v": VectorSpec(2, "softmax")}
    outs = {f"d{i}": [BOX, NONE, BOX] if i < 4 else [NONE, NONE, BOX] for i in range(5)}
    outs["v"] = [np.ones(2)] * 3
    assert signatures(outs, {"d0", "v"}, specs).tolist() == [1, 0, 1]
    assert signatures(outs, {"d0", "d4"}, specs).tolist() == [1, 0, 2]
    # four or five firing detectors count as MAX_FIRING: more would split the warm-up too thin
    assert MAX_FIRING == 3
    assert signatures(outs, set(specs), specs).tolist() == [3, 0, 3]
    assert signatures(outs, {"v"}, specs).tolist() == [0, 0, 0]
    # one frame in a worker: a detector that did not run or failed finds nothing
    assert frame_signature({"d0": BOX, "d1": None, "d4": NONE}, ["d0", "d1", "d2", "d4"]) == 1
    assert frame_signature({"d0": np.ones(7), "d1": "x", "d2": BOX}, ["d0", "d1", "d2"]) == 1


def test_a_table_splits_the_pooled_out_of_fold_scores_by_signature():
    data = outputs(60)
    fit = cross_fit(SPECS, data, FAST, folds=3)
    active = frozenset({"boxes"})  # fires on digits >= 5, so its signature says which half
    scores = fit.oracle.per_sample(active, "parity")
    fired = np.concatenate([signatures(p.outputs, active, SPECS) for p in fit.oracle.parts])
    t = content_table(fit.oracle, active, SPECS)
    assert t.detectors == ("boxes",) and t.runs == 1 and t.seen == (True, True, False, False)
    assert t.overall["parity"] == pytest.approx(scores.mean())
    expected = (scores[fired == 0].mean(), scores[fired == 1].mean(), scores.mean(), scores.mean())
    assert t.by_signature["parity"] == pytest.approx(expected)
    # a stream whose detector fires on every frame: only the firing frames' scores count
    busy = t.forecast([0, 10, 0, 0]).value * 4 - 1
    assert busy == pytest.approx(sum(t.by_signature[m][1] for m in ("digit", "parity", "noise")))


def test_on_the_content_that_was_scored_the_plan_forecast_is_the_plans_estimate():
    data = outputs(60)
    groups = ["a"] * 30 + ["b"] * 30
    fit = fit_and_score(SPECS, data, FAST, "weighted", "mixed", 3, groups)
    active = frozenset({"boxes", "digit"})
    got = plan_content_forecast(fit.oracle, active, data, SPECS)
    assert got.value == pytest.approx(fit.oracle.accuracy(active))
    assert got.unseen == 0.0 and got.floor == pytest.approx(got.value)
    # the mixed oracle's estimates are split one by one and averaged, as it averages them
    t = content_table(fit.oracle, active, SPECS)
    for m in ("parity", "noise"):
        parts = [content_table(e, active, SPECS).by_signature[m] for e in fit.oracle.estimates]
        assert t.by_signature[m] == pytest.approx(np.mean(parts, axis=0))
    assert plan_content_forecast(fit.oracle, frozenset(SPECS), data, SPECS) == ContentForecast(
        1.0, 0.0, 1.0
    )


def test_the_floor_scores_synthesis_0_on_content_no_estimate_saw():
    data = outputs(60)
    quiet = {m: v if m != "boxes" else [NONE] * 60 for m, v in data.items()}  # never fires
    fit = cross_fit(SPECS, quiet, FAST, folds=3)
    active = frozenset({"boxes", "digit"})
    fires = {m: [BOX] * 4 if m == "boxes" else data[m][:4] for m in data}
    got = plan_content_forecast(fit.oracle, active, fires, SPECS)
    # the estimates never saw the box found: forecast by their means, floor at 0 for them
    assert got.unseen == 1.0
    assert got.value == pytest.approx(fit.oracle.accuracy(active))
    assert got.floor == pytest.approx(2 / 4)


def test_the_readmes_link_core_example_runs(tmp_path, monkeypatch):
    """The README's plain-Python example, run as written on small real-shaped outputs."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (example,) = [b for b in blocks if "fit_and_score(" in b and "plan_content_forecast" in b]
    data = outputs(60)
    monkeypatch.chdir(tmp_path)  # it saves to ./linkstore-data
    scope = {
        "specs": SPECS,
        "outputs": data,
        "stream_ids": ["a"] * 30 + ["b"] * 30,
        "costs": {m: {"ms": 10.0} for m in SPECS},
        "outputs_seen": outputs(20, seed=3),
    }
    exec(compile(example, "README.md", "exec"), scope)
    assert scope["version"] == 1 and (tmp_path / "linkstore-data").is_dir()
    assert 0.0 <= scope["forecast"].value <= 1.0


def test_the_table_that_divided_by_zero_on_every_replay_is_refused():
    """Review: runs 0 and no synthesized model passed every check, and the tally's first
    forecast divided by ``runs + len(overall)`` == 0 in the control replay of every worker."""
    models = ["d", "a"]
    empty = {"detectors": [], "runs": 0, "overall": {}, "by_signature": {}, "seen": [True] * 4}
    with pytest.raises(ValueError, match="runs 0 and no synthesized model"):
        ContentTable.from_meta(empty, models)
    with pytest.raises(ValueError, match="runs 0 and no synthesized model"):
        ContentTable((), 0, {}, {}, (True,) * 4)


@pytest.mark.parametrize(
    "change,why",
    [
        ({"runs": -1}, "runs"),
        ({"runs": 2.5}, "runs must be an int"),
        ({"runs": True}, "runs must be an int"),
        ({"runs": float("inf")}, "runs must be an int"),
        ({"runs": "1"}, "runs must be an int"),
        ({"runs": 3}, "this pipeline has 4"),  # 3 run + 2 synthesized of 4 models
        ({"overall": {"a": float("nan"), "b": 0.8}}, "numbers in"),
        ({"overall": {"a": "nan", "b": 0.8}}, "numbers in"),
        ({"by_signature": {"a": [0.5, 0.5, float("inf"), 0.5], "b": [0.8] * 4}}, "numbers in"),
        ({"by_signature": {"a": [0.5] * 3, "b": [0.8] * 4}}, "numbers in"),
        ({"by_signature": {"a": [0.5] * 4}}, "one by_signature row"),
        ({"seen": [True, True, False]}, "seen flags"),
        ({"overall": {"a": 1e400, "b": 0.8}}, "numbers in"),
    ],
)
def test_a_table_that_could_divide_by_zero_or_yield_nan_is_refused_whole(change, why):
    t = table(a=(0.6, 1.0, 0.4, 0.6, 0.6), b=(0.8, 0.8, 0.8, 0.8, 0.8))
    with pytest.raises(ValueError, match=why):
        ContentTable.from_meta({**t.to_meta(), **change}, ["d", "a", "b", "r"])


@pytest.mark.parametrize("runs,synthesized", [(1, 0), (0, 1), (3, 1)])
def test_every_table_a_record_can_carry_forecasts_finite_numbers(runs, synthesized):
    rows = {f"m{i}": [0.5] * (MAX_FIRING + 1) for i in range(synthesized)}
    meta = {
        "detectors": [],
        "runs": runs,
        "overall": {m: 0.5 for m in rows},
        "by_signature": rows,
        "seen": [True, False, True, False],
    }
    t = ContentTable.from_meta(meta, [f"m{i}" for i in range(4)])
    for counts in ([0, 0, 0, 0], [1, 0, 0, 0], [0, 5, 0, 2]):
        got = t.forecast(counts)
        assert all(0.0 <= v <= 1.0 for v in (got.value, got.unseen, got.floor))
