"""EXPERIMENT (reverted in the next commit): cascades (``gate`` modes) in the stream planner.

    python bench/cascade_plans.py deploy/configs/dnn.yaml --costs deploy/costs/dnn.json

A ``gate`` runs its model on the frames where a source detector finds anything and draws it from
the source's head elsewhere. Variants of how the planner prices it, replayed as the bench's
offline stream row (seed 0) at each budget, with the committed costs:

- ``no cascades``: the bench's row as it is;
- ``priced on the warm-up``: the share of warm-up frames where the source fired;
- ``+ z between-stream errors``: that share plus z standard errors from how it differs
  between streams;
- ``re-priced live``: the warm-up's share at first, then the share over the last 64 frames
  where the source ran, re-planning when it moves (budget overruns paid back as re-plans do);
- ``re-priced live, heads re-weighted``: the same, and heads from that source re-weighted by the
  live share (their warm-up agreement where it fires and where it does not);
- ``oracle``: curves and heads from every frame (no deployment has them).

The knobs are environment variables read by the code of this commit (ZF, FR, RW, HOR, WIN).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from mlink.deploy.config import load_config
from mlink.eval.cost_tables import COSTS_HELP, priced_workload
from mlink.eval.experiment import train_workload
from mlink.eval.streaming.method import OFFLINE, stream_mlink

VARIANTS = {
    "no cascades": ({}, False, False),
    "priced on the warm-up": ({}, True, False),
    "+ 1 between-stream error": ({"ZF": "1"}, True, False),
    "+ 2 between-stream errors": ({"ZF": "2"}, True, False),
    "re-priced live": ({"FR": "1"}, True, False),
    "re-priced live, payback over >= 64 frames": ({"FR": "1", "HOR": "64"}, True, False),
    "re-priced live, heads re-weighted": ({"FR": "1", "RW": "1"}, True, False),
    "oracle, no cascades": ({}, False, True),
    "oracle, cascades": ({}, True, True),
}
KNOBS = ("ZF", "FR", "RW", "HOR", "WIN")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--costs", default="cached", help=COSTS_HELP)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.33, 0.5])
    args = parser.parse_args()
    config = load_config(args.config)
    wl = priced_workload(config, args.costs)
    trained = train_workload(wl, 0.1, replace(config.links.train_config(), seed=0))
    full = wl.total_cost()
    print("| variant | " + " | ".join(f"budget {b:.0%}" for b in args.budgets) + " |")
    print("|---|" + "---|" * len(args.budgets))
    for name, (env, gates, oracle) in VARIANTS.items():
        cells = []
        for b in args.budgets:
            for k in KNOBS:
                os.environ.pop(k, None)
            os.environ.update(env)
            run = stream_mlink(trained, b * full, replace(OFFLINE, gates=gates), oracle=oracle)
            st = run.steady()
            replans = run.result.details["replans"]
            cells.append(
                f"{st['accuracy']:.1%} / {st['compute_saved']:.1%} "
                f"(synth {st['synthesized_accuracy']:.1%}, {replans} re-plans)"
            )
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
