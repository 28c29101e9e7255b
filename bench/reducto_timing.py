"""How the frame-filtering baseline's figures move with the time its features take.

    python bench/reducto_timing.py deploy/configs/video.yaml --costs deploy/costs/video.json

``mlink bench`` times Reducto's frame features in each run and charges them on every frame, so
the budget left for its filters moves with that time, and its filters are chosen by an exact
knapsack and served under a running budget account: a discrete choice that a fraction of a
millisecond can flip. Its seeds do not re-time the features, so the bench's spread over seeds
is zero while the figure moves between runs. This replays the baseline on the cached outputs
at several feature times (the measured one first) and prints agreement and compute saved.
"""

from __future__ import annotations

import argparse

from mlink.deploy.config import load_config
from mlink.eval.baselines.frames import prepare_frames
from mlink.eval.baselines.reducto import frame_filtering
from mlink.eval.config_workload import SourceFrames
from mlink.eval.cost_tables import COSTS_HELP, priced_workload
from mlink.eval.workload import stream_split

FEATURE_MS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a pipeline config whose source yields frames")
    parser.add_argument("--costs", default="cached", help=COSTS_HELP)
    parser.add_argument("--train", type=float, default=0.1, help="training share of each stream")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.33, 0.5])
    parser.add_argument("--feature-ms", type=float, nargs="+", default=list(FEATURE_MS))
    args = parser.parse_args()
    config = load_config(args.config)
    workload = priced_workload(config, args.costs)
    frames = prepare_frames(SourceFrames(config))
    train, test = stream_split(workload.streams, args.train)
    full = workload.total_cost("ms")
    times = [frames.feature_ms, *args.feature_ms]
    print(
        f"## {workload.name}: frame filtering by feature time (measured now: {times[0]:.3f} ms)\n"
    )
    print("| budget | " + " | ".join(f"{t:.3f} ms" for t in times) + " | range |")
    print("|---" * (len(times) + 2) + "|")
    for fraction in args.budgets:
        runs = [
            frame_filtering(workload, frames.features, train, test, fraction * full, t)
            for t in times
        ]
        accuracy = [r.accuracy for r in runs]
        cells = [f"{r.accuracy:.1%} / {r.compute_saved:.1%}" for r in runs]
        spread = f"{min(accuracy):.1%}-{max(accuracy):.1%}"
        print(f"| {fraction:.0%} | " + " | ".join(cells) + f" | {spread} |")


if __name__ == "__main__":
    main()
