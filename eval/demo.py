"""`mlink demo`: links + budgeted selection on a real workload, offline, in well under a minute.

Seven real classifiers (see :mod:`mlink.eval.workloads.digits`) run on real digit images. Links
train on the first 10% of the stream (the paper's protocol), an active set is chosen under a
compute budget by the paper's greedy and by our exact selector, and both are measured on the
remaining 90%: which models ran, how well the synthesized ones agree with the real models, and
how much of the measured per-frame compute was saved. The trained links are saved as a new
version in a local linkstore, as the streaming trainer does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mlink import deploy
from mlink.deploy.status_view import percent
from mlink.eval.experiment import PlanResult, compare_selectors, train_workload
from mlink.eval.run import print_summary, run_and_summarize
from mlink.eval.workload import Workload, shuffled_order
from mlink.eval.workloads import digits
from mlink.linkstore.store import LinkStore
from mlink.linkstore.training import TrainConfig


def digits_workload(progress: bool = False, shuffle_seed: int | None = 0) -> Workload:
    """Every digits model's real outputs on the stream and its measured per-frame cost.

    Shuffled with ``shuffle_seed`` by default: the images are independent samples, and their
    file order (labels often counting up) would favour reuse; None keeps the file order.
    """
    workload = digits.workload(progress=progress)
    if shuffle_seed is None:
        return workload
    return workload.reordered(shuffled_order(workload.streams, shuffle_seed))


def plan_table(workload: Workload, plans: list[PlanResult]) -> Table:
    table = Table(title=f"{workload.name}: per-model status and agreement on the evaluation frames")
    table.add_column("model")
    table.add_column("ms/frame", justify="right")
    for plan in plans:
        table.add_column(plan.method, justify="right")
    for model in workload.models:
        row = [model, f"{workload.costs[model]['ms']:.3f}"]
        for plan in plans:
            if model in plan.active:
                row.append("[green]executed[/green]")
            else:
                row.append(f"synthesized {plan.per_model[model]:.1%}")
        table.add_row(*row)
    table.add_section()
    table.add_row("accuracy (mean agreement)", "", *[f"{p.accuracy:.1%}" for p in plans])
    table.add_row(
        "synthesized outputs only",
        "",
        *[percent(p.synthesized_accuracy) for p in plans],
    )
    table.add_row(
        "predicted by selection (cross-fitted)",
        "",
        *[f"{p.predicted_accuracy:.1%}" for p in plans],
    )
    table.add_row("compute saved", "", *[f"{p.compute_saved:.1%}" for p in plans])
    table.add_row("plan cost ms/frame (incl. links)", "", *[f"{p.cost['ms']:.3f}" for p in plans])
    return table


def run_demo(
    budget_fraction: float = 1 / 3,
    train_fraction: float = 0.1,
    store_dir: Path | None = None,
    console: Console | None = None,
) -> list[PlanResult]:
    console = console or Console()
    console.rule("MLink-stream offline demo: digits workload")
    start = time.perf_counter()
    workload = digits_workload()
    full = workload.total_cost("ms")
    console.print(
        f"{len(workload.models)} black-box models on {workload.n_frames} real frames (shuffled, "
        f"seed 0); running all of them costs {full:.3f} ms/frame ({workload.cost_source}; "
        f"{time.perf_counter() - start:.1f} s)"
    )
    start = time.perf_counter()
    trained = train_workload(workload, train_fraction, TrainConfig())
    n_links = len(trained.linkset.links)
    console.print(
        f"trained {n_links} links + {len(trained.linkset.ensembles)} ensembles on the first "
        f"{train_fraction:.0%} of the stream ({len(trained.train_idx)} frames) in "
        f"{time.perf_counter() - start:.1f} s; evaluating on {len(trained.test_idx)} frames"
    )
    budget = {"ms": full * budget_fraction}
    plans = compare_selectors(trained, budget)
    console.print(plan_table(workload, plans))
    console.print(
        f"budget: {budget['ms']:.3f} ms/frame ({budget_fraction:.0%} of running every model)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = LinkStore(store_dir or Path(tmp) / "linkstore")
        tensors, meta = trained.linkset.to_bundle()
        version = store.save(tensors, meta)
        console.print(f"links saved as linkstore version {version} in {store.root}")
    for plan in plans:
        console.print(
            f"[bold]{plan.method}[/bold]: saved {plan.compute_saved:.1%} of compute, kept "
            f"{plan.accuracy:.1%} accuracy, active={plan.active}"
        )
    return plans


# ---------------------------------------------------------------------------- streaming demo
DEMO_CONFIG = Path(deploy.__file__).parent / "configs" / "video-demo.yaml"


def run_streaming_demo(config_path: Path = DEMO_CONFIG, console: Console | None = None) -> dict:
    from mlink.deploy.config import load_config

    console = console or Console()
    config = load_config(config_path)
    console.rule(f"MLink-stream: {config.name} pipeline on the embedded broker")
    with tempfile.TemporaryDirectory() as tmp:
        # a fresh linkstore per demo run, so the run shows warm-up, training and the switch
        config = config.model_copy(
            update={"links": config.links.model_copy(update={"store": str(Path(tmp) / "links")})}
        )
        tmp_config = Path(tmp) / "pipeline.yaml"
        import yaml

        tmp_config.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        summary = run_and_summarize(config, tmp_config, None, 900.0, True, console)
    print_summary(summary, console)
    return summary
