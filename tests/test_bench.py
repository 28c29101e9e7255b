"""`mlink bench` end to end on a tiny synthetic workload: every method at every budget."""

import json

import numpy as np
import pytest

from mlink.deploy.config import parse_config
from mlink.eval import bench_table
from mlink.eval.bench import METHODS, plot, run_bench, to_json
from mlink.eval.bench_table import markdown


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


def bench(config, tmp_path, fractions, ratios=(0.1,), **options):
    """``run_bench`` quietly, with the output cache in ``tmp_path``."""
    return run_bench(
        config,
        fractions,
        ratios=ratios,
        progress=False,
        log=lambda _: None,
        cache_dir=tmp_path / "cache",
        **options,
    )


@pytest.fixture
def config(tmp_path):
    return tiny_config(tmp_path)


def test_bench_reports_every_method_at_every_budget(config, tmp_path):
    report = bench(config, tmp_path, [0.4, 0.7], ratios=(0.1, 0.2))
    assert report.frames == 80
    assert {r["method"] for r in report.rows} == set(METHODS)
    assert len(report.rows) == 2 * len(METHODS)
    for row in report.rows:
        # each method's own verdict, which is whether what it spent fits the budget
        assert row["feasible"] == (row["cost_ms"] <= row["budget"] * (1 + 1e-6)), row
        assert 0.0 <= row["accuracy"] <= 1.0
        synthesized = [m for m, rate in row["run_rate"].items() if rate < 1.0]
        if not synthesized:
            assert row["synthesized_accuracy"] is None
        elif all(row["run_rate"][m] == 0.0 for m in synthesized):  # plans: whole models synthesized
            expected = sum(row["per_model"][m] for m in synthesized) / len(synthesized)
            assert row["synthesized_accuracy"] == pytest.approx(expected)
        assert (
            row["synthesized_accuracy"] is None
            or row["synthesized_accuracy"] <= row["accuracy"] + 1e-9
        )
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

    saved, again = tmp_path / "report.json", tmp_path / "again.png"  # tables and plot, no rerun
    saved.write_text(to_json(report))
    bench_table.main([str(saved), "--plot", str(again)])
    assert again.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_uses_the_config_budget_when_no_sweep_is_given(config, tmp_path):
    report = bench(config, tmp_path, None)
    assert all(r["budget_fraction"] == pytest.approx(0.5) for r in report.rows)


def test_bench_marks_a_method_that_cannot_fit_the_budget_instead_of_failing(tmp_path):
    # models that cost nothing: links are dearer than the models, so no MLink plan fits
    config = tiny_config(tmp_path, delay_ms=0.0)
    report = bench(config, tmp_path, [0.05])
    infeasible = [r for r in report.rows if not r["feasible"]]
    assert infeasible, "expected at least one method with no plan under this budget"
    for row in infeasible:  # no plan at all (says why), or a plan that spent over the budget
        if row["accuracy"] is None:
            assert "raise the budget" in row["note"]
        else:
            assert row["cost_ms"] > row["budget"]
    assert any(r["accuracy"] is None for r in infeasible)
    assert any(r["feasible"] for r in report.rows)  # the baselines that fit still report
    png = tmp_path / "over.png"  # cells over budget are drawn hollow, cells without a plan not
    plot(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reports_mean_and_spread_over_seeds_and_says_how_it_ordered_and_costed(tmp_path):
    config = tiny_config(tmp_path)
    report = bench(config, tmp_path, [0.5], order="shuffled", seeds=2)
    assert report.order == "shuffled" and report.seeds == 2
    assert {r["seed"] for r in report.rows} == {0, 1}
    assert len(report.cells) == len(METHODS)
    for cell in report.cells:
        rows = [r for r in report.rows if r["method"] == cell["method"]]
        accs = [r["accuracy"] for r in rows]
        assert cell["runs"] == 2
        assert cell["accuracy"] == pytest.approx(sum(accs) / 2)
        assert cell["accuracy_spread"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    exact = next(c for c in report.cells if c["method"] == "MLink (exact selection)")
    assert exact["prediction_gap"] is not None and exact["lower_gap"] is None
    stream = next(c for c in report.cells if c["method"] == "MLink stream (offline)")
    assert stream["predicted_lower"] <= stream["predicted_accuracy"]  # the bound, beside it
    assert stream["lower_gap"] == pytest.approx(stream["predicted_lower"] - stream["accuracy"])
    # what the plan promises: the forecast bound, never above the bound it was chosen on
    assert stream["predicted_forecast"] <= stream["predicted_lower"] + 1e-12
    assert stream["forecast_gap"] == pytest.approx(
        stream["predicted_forecast"] - stream["accuracy"]
    )
    assert "(forecast " in markdown(report) and "forecast bound" in markdown(report)
    assert "lower bound" in markdown(report)
    assert "plan in force" in markdown(report) and exact["in_force_gap"] is None
    assert stream["predicted_in_force"] == pytest.approx(stream["predicted_accuracy"])
    # no probes offline: the forecast with probes stays the plan's forecast bound
    assert stream["predicted_live"] == pytest.approx(stream["predicted_forecast"])
    assert "with probes" in markdown(report) and exact["live_gap"] is None
    # the paper rows' estimate re-weighted to the content their active models saw; stream
    # plans have probes for that and carry none
    assert exact["content_gap"] == pytest.approx(exact["predicted_content"] - exact["accuracy"])
    assert 0.0 <= exact["predicted_content"] <= 1.0 and stream["content_gap"] is None
    assert "content-weighted" in markdown(report)
    # predictions move between seeds too, and say by how much
    spread = f"{exact['predicted_accuracy']:.1%}±{exact['predicted_accuracy_spread'] * 100:.1f}"
    assert f"pred {spread}" in markdown(report)
    assert f"| {spread} |" in markdown(report)  # the predicted-against-realised table
    assert "measured" in report.cost_table["models"]
    assert report.cost_table["full_ms"] == pytest.approx(report.full_cost_ms)


def test_bench_declared_costs_need_every_model_to_declare_them(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(ValueError, match=r"cost\.ms on every model"):
        bench(config, tmp_path, [0.5], costs="declared")


def test_bench_prices_on_a_live_runs_cost_table(tmp_path):
    from mlink.eval.config_workload import load_workload
    from mlink.eval.cost_tables import with_cost_table

    config = tiny_config(tmp_path)
    summary = tmp_path / "run.json"
    summary.write_text(
        json.dumps({"frames": 80, "model_ms": {"bright": 1, "level": 2, "spread": 7}})
    )
    base = load_workload(config, False, tmp_path / "cache")
    priced = with_cost_table(base, config, str(summary))
    assert {m: priced.costs[m]["ms"] for m in priced.models} == {
        "bright": 1,
        "level": 2,
        "spread": 7,
    }
    assert priced.total_cost("ms") == 10.0
    assert priced.cost_source == f"read from {summary}"


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    """The tiny workload with its links trained on the first 20% of the stream."""
    from mlink.eval.config_workload import load_workload
    from mlink.eval.experiment import train_workload
    from mlink.linkstore.training import TrainConfig

    tmp_path = tmp_path_factory.mktemp("tiny")
    workload = load_workload(tiny_config(tmp_path), False, tmp_path / "cache")
    return train_workload(workload, 0.2, TrainConfig(epochs=5, seed=0))


def test_a_stream_run_that_replans_predicts_each_frame_by_the_plan_it_ran_under(tiny_trained):
    from dataclasses import replace

    from mlink.eval.streaming.method import OFFLINE, ONLINE, stream_mlink

    trained = tiny_trained
    budget = 0.5 * trained.workload.total_cost()
    once = stream_mlink(trained, budget, OFFLINE)
    assert len(once.plans) == 1 and not once.in_force.any()
    assert once.result.predicted_in_force == pytest.approx(once.result.predicted_accuracy)
    # a refit after every probe: the plan changes during the run
    run = stream_mlink(trained, budget, replace(ONLINE, probe_every=4, refit_every=1))
    assert len(run.plans) > 1 and len(run.in_force) == len(trained.test_idx)
    assert run.in_force[0] == 0 and 1 <= run.in_force[-1] <= len(run.plans) - 1
    assert (np.diff(run.in_force) >= 0).all()
    held = np.mean([run.plans[k].estimate for k in run.in_force])
    assert run.result.predicted_in_force == pytest.approx(held)
    assert run.result.predicted_accuracy == run.plans[0].estimate  # the up-front figure stays
    assert once.result.predicted_live == pytest.approx(once.result.predicted_forecast)  # no probe
    assert run.result.predicted_live is not None and 0.0 <= run.result.predicted_live <= 1.0


def test_a_stream_row_reports_its_probe_share_and_an_over_budget_cell_names_it(tiny_trained):
    """Probes run every model, so a finite stream holding more of them than 1 in ``probe_every``
    (a probe in a partial block at either end) costs more than its plan counted: the row says
    how many frames were probes, and a cell over budget shows it."""
    from dataclasses import replace

    from mlink.eval.bench import METRICS, _row, aggregate
    from mlink.eval.bench_table import format_cell
    from mlink.eval.streaming.method import OFFLINE, ONLINE, stream_mlink

    full = tiny_trained.workload.total_cost()
    run = stream_mlink(tiny_trained, 0.5 * full, replace(ONLINE, probe_every=4))
    assert run.result.details["probe_share"] == pytest.approx(run.probe.mean())
    assert run.probe.any()
    row = _row("online", 0.5 * full, full, 0, run.result)
    assert row["probe_share"] == pytest.approx(run.probe.mean())
    offline_run = stream_mlink(tiny_trained, 0.5 * full, OFFLINE)
    offline = _row("offline", 0.5 * full, full, 0, offline_run.result)
    assert offline["probe_share"] == 0.0
    cell = aggregate([row | {"feasible": False}])[0]
    assert f"over budget in 1/1 runs (probes {run.probe.mean():.2%} of frames)" in format_cell(
        cell, 1
    )
    # two seeds where nothing fitted: no spread from the one measured run, and not "over budget"
    nothing = {**row, "feasible": False, **dict.fromkeys(METRICS)}
    fits = row | {"feasible": True}
    mixed = format_cell(aggregate([fits, nothing | {"seed": 1}, nothing | {"seed": 2}])[0], 3)
    assert "±" not in mixed and "over budget" not in mixed
    assert "nothing fits in 2/3 runs" in mixed


def test_the_oracle_stream_plan_is_fitted_on_every_frame_and_scores_links_on_the_rest(
    tiny_trained,
):
    from mlink.eval.streaming.method import OFFLINE, links_estimate, stream_mlink

    trained = tiny_trained
    workload = trained.workload
    run = stream_mlink(trained, 0.5 * workload.total_cost(), OFFLINE, oracle=True)
    assert run.fits[0].n_samples == len(workload.streams)  # bench rows: the training part only
    assert stream_mlink(trained, 0.5 * workload.total_cost()).fits[0].n_samples == len(
        trained.train_idx
    )
    active, target = frozenset(workload.models[:1]), workload.models[-1]
    seen = links_estimate(trained, evaluated=True)(active, target)
    assert seen[0] == pytest.approx(trained.test_oracle(active, target))
    assert seen[1] == len(trained.test_idx)


def test_the_ablation_runs_every_variant_at_every_budget_and_shows_steady_figures_for_probes(
    tiny_trained,
):
    from dataclasses import replace

    from mlink.eval.streaming.ablation import VARIANTS, ablation_rows, markdown
    from mlink.eval.streaming.method import OFFLINE, ONLINE

    variants = {"offline": OFFLINE, "probes": replace(ONLINE, probe_every=4)}
    rows = ablation_rows(tiny_trained, [0.3, 0.6], variants)
    assert [(r["variant"], r["fraction"]) for r in rows] == [
        ("offline", 0.3),
        ("offline", 0.6),
        ("probes", 0.3),
        ("probes", 0.6),
    ]
    assert all(r["probes"] == 0 for r in rows[:2]) and all(r["probes"] > 0 for r in rows[2:])
    lines = markdown(rows).splitlines()
    assert lines[0] == "| variant | budget 30% | budget 60% |"
    offline_line, probes_line = lines[2], lines[3]
    assert offline_line.startswith("| offline | ") and "steady" not in offline_line
    assert probes_line.startswith("| probes | ") and probes_line.count("steady") == 2
    assert "default (offline, lower-bound selection)" in VARIANTS
    assert all(r["plans_budget"] == r["fraction"] for r in rows)


def test_free_probe_variants_give_the_plans_the_probes_share_on_top_of_the_budget(tiny_trained):
    """Their steady figures then spend what the static plan spends: what probes would gain if
    they cost nothing."""
    from dataclasses import replace

    from mlink.eval.streaming.ablation import VARIANTS, FreeProbes, ablation_rows
    from mlink.eval.streaming.method import OFFLINE, ONLINE

    probes = replace(ONLINE, probe_every=4, guard=False)
    rows = ablation_rows(tiny_trained, [0.3], {"paid": probes, "free": FreeProbes(probes)})
    paid, free = rows
    assert paid["plans_budget"] == pytest.approx(0.3)
    assert free["plans_budget"] == pytest.approx(0.3 + 0.7 / 4)  # probes run 1 - 0.3 more
    assert free["probes"] > 0 and free["compute_saved"] <= paid["compute_saved"]
    assert set(free["plan"]) == set(tiny_trained.workload.specs)  # each model's mode, in words
    assert any(isinstance(v, FreeProbes) for v in VARIANTS.values())
    with pytest.raises(ValueError, match="probe_every"):
        FreeProbes(OFFLINE)


def test_the_ablation_refuses_an_only_that_matches_no_variant_and_names_them(tmp_path):
    from typer.testing import CliRunner

    from mlink.eval.streaming.ablation import app

    config = tmp_path / "any.yaml"
    config.write_text("name: any\n")
    result = CliRunner().invoke(app, [str(config), "--only", "no such variant"])
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())  # the error panel wraps lines
    assert "no such variant" in text and "free probes + drift guard" in text


def test_an_adaptive_probe_rate_never_probes_more_often_than_configured(tiny_trained):
    """Halving the probe interval on drift below the configured one made probes overrun the
    budget on every video workload, and the plans fell back to running every model."""
    from dataclasses import replace

    from mlink.eval.streaming.method import ONLINE, stream_mlink

    full = tiny_trained.workload.total_cost()
    config = replace(ONLINE, probe_every=8, guard_tolerance=0.0, adaptive_probes=True)
    run = stream_mlink(tiny_trained, 0.5 * full, config)
    assert run.result.details["replans"] >= 1
    assert run.probe.mean() <= 1 / 8 + 1 / len(run.probe)
    assert all(p.feasible for p in run.plans)
