"""What a model call costs when a worker runs every model side by side: wall time or CPU time?

    python bench/call_clocks.py deploy/configs/dnn.yaml

A worker runs each model on its own thread, all of a frame's models at once (warm-up and probe
frames run every model), on however many cores the machine has. This does the same with the
config's models on every ``--every``-th frame of its source (OpenCV and torch with their default
threads, as in a worker) and prints, per model, the mean wall time and the mean CPU time of the
calling thread (``time.thread_time``), each with its share of the total, beside each model
timed alone on the same frames (one model at a time, one thread: how the output cache measures
costs). Plans use the shares: a clock whose shares stay near the models' own prices them as
they would cost alone.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlink.deploy.config import load_config
from mlink.eval.config_workload import SourceFrames, config_models
from mlink.eval.memory import single_threaded


def timed(fn, frame) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn(frame)
    return (time.perf_counter() - wall) * 1000.0, (time.thread_time() - cpu) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a pipeline config, e.g. deploy/configs/dnn.yaml")
    parser.add_argument("--every", type=int, default=8, help="use every n-th frame")
    args = parser.parse_args()
    config = load_config(args.config)
    models = {m: fn for m, (fn, _) in config_models(config)[0].items()}
    frames = [f for i, (_, f) in enumerate(SourceFrames(config)) if i % args.every == 0]
    for fn in models.values():  # untimed first calls (lazy loading, allocations)
        fn(frames[0])
    with single_threaded():  # each model alone, as the output cache times it
        alone = {m: [timed(fn, f)[0] for f in frames] for m, fn in models.items()}
    solo = {m: float(np.mean(t)) for m, t in alone.items()}
    pools = {m: ThreadPoolExecutor(1) for m in models}
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in models}
    for frame in frames:  # one frame at a time, every model at once, as on a warm-up frame
        calls = {m: pools[m].submit(timed, fn, frame) for m, fn in models.items()}
        for m, call in calls.items():
            times[m].append(call.result())
    wall = {m: float(np.mean([w for w, _ in t])) for m, t in times.items()}
    cpu = {m: float(np.mean([c for _, c in t])) for m, t in times.items()}
    shares = {
        name: {m: ms / sum(table.values()) for m, ms in table.items()}
        for name, table in (("solo", solo), ("wall", wall), ("CPU", cpu))
    }
    print(f"{len(frames)} frames of {config.name}, every model at once, one thread each\n")
    print("| model | alone ms | share | wall ms | share | CPU ms | share |")
    print("|---|---|---|---|---|---|---|")
    for m in models:
        cells = [
            f"{t[m]:.1f} | {shares[n][m]:.1%}"
            for n, t in (("solo", solo), ("wall", wall), ("CPU", cpu))
        ]
        print(f"| {m} | " + " | ".join(cells) + " |")
    for name, table in (("wall", wall), ("CPU", cpu)):
        off = max(abs(shares[name][m] / shares["solo"][m] - 1.0) for m in models)
        print(
            f"\n{name}: {sum(table.values()):.0f} ms in all; "
            f"shares off the models' own by up to {off:.0%}"
        )


if __name__ == "__main__":
    main()
