"""Cascades in the stream planner: the bench's offline stream row with and without them.

    python bench/cascade_plans.py deploy/configs/video.yaml --costs deploy/costs/video.json

A cascade (``links.cascades``; the ``gate`` mode of :mod:`mlink.linkstore.schedule`) runs its
model on the frames where a source detector finds anything and draws it from the source's head
elsewhere. Its cost follows the content, so the trainer prices its run share one between-stream
standard error above the warm-up's (:func:`mlink.linkstore.streamfit.fit_stream`). Per budget:
the offline stream row of ``mlink bench`` (seed ``--seed``, the committed costs) without and with
cascades, and the same pair planned from curves fitted on every frame (an oracle no deployment
has: what the modes keep when the estimates are right). Cells: all models / compute saved
(synthesized only) on steady frames, then the first plan's forecast: its estimate and the lower
bound the planner maximises, each as points over (+) or under (-) what was kept.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from mlink.deploy.config import load_config
from mlink.eval.cost_tables import COSTS_HELP, priced_workload
from mlink.eval.experiment import train_workload
from mlink.eval.streaming.method import OFFLINE, stream_mlink

VARIANTS = {
    "no cascades": (False, False),
    "cascades": (True, False),
    "oracle, no cascades": (False, True),
    "oracle, cascades": (True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a pipeline config with box models")
    parser.add_argument("--costs", default="cached", help=COSTS_HELP)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.33, 0.5])
    parser.add_argument("--seed", type=int, default=0, help="seed of the paper's links")
    args = parser.parse_args()
    config = load_config(args.config)
    wl = priced_workload(config, args.costs)
    trained = train_workload(wl, 0.1, replace(config.links.train_config(), seed=args.seed))
    full = wl.total_cost()
    print("| plan | " + " | ".join(f"budget {b:.0%}" for b in args.budgets) + " |")
    print("|---|" + "---|" * len(args.budgets))
    for name, (gates, oracle) in VARIANTS.items():
        cells = []
        for b in args.budgets:
            run = stream_mlink(trained, b * full, replace(OFFLINE, gates=gates), oracle=oracle)
            st = run.steady()
            kept = float(st["accuracy"] or 0.0)
            first = run.plans[0]
            lower = float(np.mean(list(first.lower().values())))
            cells.append(
                f"{kept:.1%} / {st['compute_saved']:.1%} ({st['synthesized_accuracy']:.1%})"
                f"<br>forecast {100 * (first.estimate - kept):+.1f}, "
                f"lower {100 * (lower - kept):+.1f}"
            )
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
