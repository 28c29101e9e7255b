"""Whether a stream plan from quick first links (``links.first_epochs``) is the plan from the
full ones: the bench's offline stream row planned from links trained at each of ``--epochs``.

    python bench/quick_first_links.py deploy/configs/dnn.yaml --costs deploy/costs/dnn.json

The bench's split (the first 10% of each stream trains, the rest is scored) and seed 0; links
and ensembles trained at each epoch count; per budget, what the offline stream plan kept and
saved, and how many models it synthesizes with the paper's links (the one mode whose estimate
depends on the links' epochs). The training time is in this process (torch's default threads),
not a worker's training process: bench/first_training.py times that.
"""

from __future__ import annotations

import argparse
import time

from mlink.deploy.config import load_config
from mlink.eval.cost_tables import COSTS_HELP, priced_workload
from mlink.eval.experiment import train_workload
from mlink.eval.streaming.method import OFFLINE, stream_mlink
from mlink.linkstore.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a pipeline config, e.g. deploy/configs/dnn.yaml")
    parser.add_argument("--costs", default="cached", help=COSTS_HELP)
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 100])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.33, 0.5])
    args = parser.parse_args()
    workload = priced_workload(load_config(args.config), args.costs)
    full = workload.total_cost()
    print(f"## {workload.name}: offline stream plans from links trained at each epoch count\n")
    print("| epochs | training (s) | budget | kept | saved | models on the paper's links |")
    print("|---|---|---|---|---|---|")
    for epochs in args.epochs:
        started = time.perf_counter()
        trained = train_workload(
            workload, 0.1, TrainConfig(seed=0, epochs=epochs, ensemble_epochs=epochs)
        )
        seconds = time.perf_counter() - started
        for fraction in args.budgets:
            run = stream_mlink(trained, fraction * full, OFFLINE)
            steady = run.steady()
            plan = run.plans[0]
            on_links = sum(c.mode.kind == "links" for c in plan.choices.values() if c.period != 1)
            print(
                f"| {epochs} | {seconds:.1f} | {fraction:.0%} | {steady['accuracy']:.1%} "
                f"| {steady['compute_saved']:.1%} | {on_links} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
