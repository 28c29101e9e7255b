"""`mlink bench` end to end on a tiny synthetic workload: every method at every budget."""

import json

import pytest

from mlink.deploy.config import parse_config
from mlink.eval.bench import plot, run_bench, to_json

METHODS = {
    "Standalone",
    "Frame filtering (Reducto)",
    "Multi-task CNN",
    "MLink (paper greedy)",
    "MLink (exact selection)",
    "MLink (exact, fusion ensemble)",
    "Reuse schedule",
    "MLink + temporal links",
    "MLink + frame filtering",
}


def tiny_config(tmp_path, delay_ms: float = 2.0):
    config = parse_config(
        {
            "name": "tiny",
            "source": {"factory": "tests.bench_models:frames", "args": {"n": 80}},
            "models": [
                {
                    "name": "bright",
                    "factory": "tests.bench_models:model",
                    "args": {"name": "bright"},
                    "output": {"kind": "vector", "size": 2, "task": "softmax"},
                },
                {
                    "name": "level",
                    "factory": "tests.bench_models:model",
                    "args": {"name": "level"},
                    "output": {"kind": "vector", "size": 1, "task": "count", "max_count": 4},
                },
                {
                    "name": "spread",
                    "factory": "tests.bench_models:model",
                    "args": {"name": "spread"},
                    "output": {"kind": "vector", "size": 1, "task": "linear", "tolerance": 0.01},
                },
            ],
            "budget": {"fraction": 0.5},
            "links": {"epochs": 10, "store": str(tmp_path / "links")},
        }
    )
    models = [
        m.model_copy(update={"args": {**m.args, "delay_ms": delay_ms}}) for m in config.models
    ]
    return config.model_copy(update={"models": models})


@pytest.fixture
def config(tmp_path):
    return tiny_config(tmp_path)


def test_bench_reports_every_method_at_every_budget(config, tmp_path):
    report = run_bench(
        config,
        [0.4, 0.7],
        ratios=(0.1, 0.2),
        progress=False,
        log=lambda _: None,
        cache_dir=tmp_path / "cache",
    )
    assert report.frames == 80
    assert {r["method"] for r in report.rows} == METHODS
    assert len(report.rows) == 2 * len(METHODS)
    for row in report.rows:
        assert row["feasible"], row
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 <= row["compute_saved"] <= 1.0
        assert row["budget_fraction"] in (pytest.approx(0.4), pytest.approx(0.7))
        # compute saved is what the measured cost says, against running every model
        assert row["compute_saved"] == pytest.approx(
            max(0.0, 1 - row["cost_ms"] / report.full_cost_ms), abs=1e-6
        )
    assert [r["ratio"] for r in report.training_ratios] == [0.1, 0.2]
    assert report.ensembles["winner"] in ("weighted", "fusion")

    decoded = json.loads(to_json(report))
    assert {"method", "budget", "accuracy", "compute_saved", "active"} <= set(decoded["rows"][0])

    png = tmp_path / "plot.png"
    plot(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_uses_the_config_budget_when_no_sweep_is_given(config, tmp_path):
    report = run_bench(
        config,
        None,
        ratios=(0.1,),
        progress=False,
        log=lambda _: None,
        cache_dir=tmp_path / "cache",
    )
    assert all(r["budget_fraction"] == pytest.approx(0.5) for r in report.rows)


def test_bench_marks_a_method_that_cannot_fit_the_budget_instead_of_failing(tmp_path):
    # models that cost nothing: links are dearer than the models, so no MLink plan fits
    config = tiny_config(tmp_path, delay_ms=0.0)
    report = run_bench(
        config,
        [0.3],
        ratios=(0.1,),
        progress=False,
        log=lambda _: None,
        cache_dir=tmp_path / "cache",
    )
    infeasible = [r for r in report.rows if not r["feasible"]]
    assert infeasible, "expected at least one method with no plan under this budget"
    for row in infeasible:
        assert row["accuracy"] is None and "raise the budget" in row["note"]
    assert any(r["feasible"] for r in report.rows)  # the baselines that fit still report
