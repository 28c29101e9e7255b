"""Does weighing every stream alike pay for a backlog's warm-up? Replays over many warm-ups.

    python bench/backlog_warmup.py deploy/configs/dnn-live.yaml --costs deploy/costs/dnn.json \
        --counts '{"bigbuckbunny": 5, "bikes": 27, ...}' --shuffles 4

A worker's warm-up under a backlog holds as many frames of each camera as the broker's fetches
happened to deliver (`mlink run --rate 0 --json` reports them as ``warmup_streams``), and which
cameras get many depends on the partitions they hash to and their frames' sizes. So one
observed warm-up is one draw. Each warm-up here is replayed with the live protocol (the
warm-up's frames train, then the budgeted schedule with probes, no re-plans, as the live budget
mode) twice: the estimates weighing every sample alike (before stop 34) and every stream alike
(the live trainer since). The warm-ups: the ``--counts`` given, and ``--shuffles`` more with the
same counts dealt to the streams in a random order (seeds 0, 1, ...; a dealing that repeats an
earlier warm-up is left out). Cells: the steady frames'
all-models agreement (synthesized only) / compute saved, on the cost table ``--costs``.

``--paper``: the paper's links instead (one active set chosen by exact selection at the config's
budget, links on every other model), their cross-fitted selection oracle weighing every sample
alike (what the live trainer does) or every stream alike; cells: agreement over every frame
after the warm-up (prediction minus that) / compute saved.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

from mlink.deploy.config import load_config
from mlink.eval.config_workload import load_workload
from mlink.eval.cost_tables import with_cost_table
from mlink.eval.experiment import compare_selectors
from mlink.eval.outputs import DEFAULT_CACHE
from mlink.eval.streaming.live import backlog_warmup, live_protocol, replay_live, warmup_links


def shuffled(counts: dict[str, int], seed: int) -> dict[str, int]:
    """The same counts dealt to the streams in another order."""
    names = list(counts)
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i]: counts[names[j]] for i, j in enumerate(order)}


def replay_pair(job: tuple[str, str, str, dict[str, int], int]) -> dict:
    """One warm-up replayed both ways (the paper's links trained once for both)."""
    config_path, costs, name, counts, stride = job
    config = load_config(config_path)
    wl = with_cost_table(load_workload(config, False, DEFAULT_CACHE), config, costs)  # type: ignore[arg-type]
    warm = backlog_warmup(wl, counts)
    trained = warmup_links(wl, warm, config)
    stream = live_protocol(config, probe_stride=stride, guard=False)
    row: dict = {"warmup": name, "counts": counts}
    for label, balanced in (("by sample", False), ("streams alike", True)):
        run = replay_live(
            config,
            wl,
            stream=replace(stream, balanced=balanced),
            warmup=warm,
            trained=trained,
        )
        row[label] = run.steady()
    return row


def paper_pair(job: tuple[str, str, str, dict[str, int], int]) -> dict:
    """One warm-up, the paper's links chosen on a selection oracle weighing samples, then
    streams, alike (the links are the same: only the oracle's weights differ)."""
    config_path, costs, name, counts, _ = job
    config = load_config(config_path)
    wl = with_cost_table(load_workload(config, False, DEFAULT_CACHE), config, costs)  # type: ignore[arg-type]
    if config.budget.fraction is None:
        raise SystemExit(f"{config_path}: --paper needs a budget fraction in the config")
    budget = {"ms": config.budget.fraction * wl.total_cost("ms")}
    row: dict = {"warmup": name, "counts": counts}
    for label, balanced in (("by sample", False), ("streams alike", True)):
        trained = warmup_links(wl, backlog_warmup(wl, counts), config, balanced)
        (plan,) = compare_selectors(trained, budget, ["MLink (exact)"])
        row[label] = {
            "accuracy": plan.accuracy,
            "predicted": plan.predicted_accuracy,
            "compute_saved": plan.compute_saved,
            "active": plan.active,
        }
    return row


def cell(steady: dict) -> str:
    if "predicted" in steady:  # the paper's links: no synthesized-only figure, its forecast
        return (
            f"{steady['accuracy']:.1%} ({(steady['predicted'] - steady['accuracy']) * 100:+.1f})"
            f" / {steady['compute_saved']:.1%}"
        )
    return (
        f"{steady['accuracy']:.1%} ({steady['synthesized_accuracy']:.1%}) / "
        f"{steady['compute_saved']:.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--costs", default="cached", help="cost table: a JSON file or cached")
    parser.add_argument("--counts", required=True, help='JSON {"stream": warm-up frames, ...}')
    parser.add_argument("--shuffles", type=int, default=4, help="more warm-ups, counts dealt anew")
    parser.add_argument("--probe-stride", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=2, help="replays side by side")
    parser.add_argument("--paper", action="store_true", help="the paper's links, not streams")
    args = parser.parse_args()
    counts = {str(k): int(v) for k, v in json.loads(args.counts).items()}
    warmups = [("as given", counts)]
    for seed in range(args.shuffles):  # a dealing that repeats an earlier warm-up is left out
        dealt = shuffled(counts, seed)
        if all(dealt != c for _, c in warmups):
            warmups.append((f"shuffle {seed}", dealt))
    jobs = [(args.config, args.costs, name, c, args.probe_stride) for name, c in warmups]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(paper_pair if args.paper else replay_pair, jobs))
    print("| warm-up | counts | by sample | streams alike | difference |")
    print("|---|---|---|---|---|")
    gains = []
    for row in rows:
        gain = row["streams alike"]["accuracy"] - row["by sample"]["accuracy"]
        gains.append(gain)
        print(
            f"| {row['warmup']} | {' '.join(str(v) for v in row['counts'].values())} | "
            f"{cell(row['by sample'])} | {cell(row['streams alike'])} | {gain * 100:+.1f} |"
        )
    mean, sd = float(np.mean(gains)), float(np.std(gains, ddof=1)) if len(gains) > 1 else 0.0
    print(
        f"\nstreams alike minus by sample: {mean * 100:+.1f} ± {sd * 100:.1f} points over "
        f"{len(gains)} warm-up{'s' * (len(gains) != 1)} "
        f"(counts in the order of: {', '.join(counts)})"
    )
    if args.paper:  # which models each plan runs on every frame
        for row in rows:
            plans = [", ".join(row[label]["active"]) for label in ("by sample", "streams alike")]
            print(f"- {row['warmup']}: by sample {plans[0]}; streams alike {plans[1]}")


if __name__ == "__main__":
    main()
