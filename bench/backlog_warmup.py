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
same counts dealt to the streams in a random order (seeds 0, 1, ...). Cells: the steady frames'
all-models agreement (synthesized only) / compute saved, on the cost table ``--costs``.
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


def cell(steady: dict) -> str:
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
    args = parser.parse_args()
    counts = {str(k): int(v) for k, v in json.loads(args.counts).items()}
    warmups = [("as given", counts)] + [
        (f"shuffle {seed}", shuffled(counts, seed)) for seed in range(args.shuffles)
    ]
    jobs = [(args.config, args.costs, name, c, args.probe_stride) for name, c in warmups]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(replay_pair, jobs))
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
        f"{len(gains)} warm-ups (counts in the order of: {', '.join(counts)})"
    )


if __name__ == "__main__":
    main()
