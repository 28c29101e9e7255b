"""What a model call costs when a worker runs every model side by side: wall time or CPU time?

    python bench/call_clocks.py deploy/configs/dnn.yaml

A worker runs each model on its own thread, all of a frame's models at once (warm-up and probe
frames run every model), on however many cores the machine has. This does the same with the
config's models on every ``--every``-th frame of its source (OpenCV and torch with their default
threads, as workers ran them before ``runtime.model_threads``; bench/library_threads.py shows
what those pools hide from the calling thread's clock) and prints, per model, the mean wall
time and the mean CPU time of the calling thread (``time.thread_time``), each with its share of
the total, beside each model timed alone on the same frames (one model at a time, one thread:
how the output cache measures costs). Plans use the shares: a clock whose shares stay near the
models' own prices them as they would cost alone.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlink.deploy.config import load_config
from mlink.eval.config_workload import SourceFrames, config_models
from mlink.eval.memory import single_threaded
from mlink.operators.model_runner import ModelRunner, RunOutcome


def timed(runner: ModelRunner, frame) -> RunOutcome:
    """One call timed as a worker times it (wall and thread CPU: :class:`ModelRunner`)."""
    (outcome,) = runner.run([frame])
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a pipeline config, e.g. deploy/configs/dnn.yaml")
    parser.add_argument("--every", type=int, default=8, help="use every n-th frame")
    args = parser.parse_args()
    config = load_config(args.config)
    models = {m: ModelRunner(m, fn, spec) for m, (fn, spec) in config_models(config)[0].items()}
    frames = [f for i, (_, f) in enumerate(SourceFrames(config)) if i % args.every == 0]
    for runner in models.values():  # untimed first calls (lazy loading, allocations)
        timed(runner, frames[0])
    with single_threaded():  # each model alone, as the output cache times it
        alone = {m: [timed(r, f).elapsed_ms for f in frames] for m, r in models.items()}
    solo = {m: float(np.mean(t)) for m, t in alone.items()}
    pools = {m: ThreadPoolExecutor(1) for m in models}
    times: dict[str, list[RunOutcome]] = {m: [] for m in models}
    for frame in frames:  # one frame at a time, every model at once, as on a warm-up frame
        calls = {m: pools[m].submit(timed, r, frame) for m, r in models.items()}
        for m, call in calls.items():
            times[m].append(call.result())
    wall = {m: float(np.mean([o.elapsed_ms for o in t])) for m, t in times.items()}
    cpu = {m: float(np.mean([o.cpu_ms for o in t])) for m, t in times.items()}
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
        off = {m: shares[name][m] - shares["solo"][m] for m in models}
        worst = max(models, key=lambda m: abs(off[m]))
        ratio = max(abs(shares[name][m] / shares["solo"][m] - 1.0) for m in models)
        print(
            f"\n{name}: {sum(table.values()):.0f} ms in all; shares off the models' own by up "
            f"to {abs(off[worst]) * 100:.1f} points ({worst}) and up to {ratio:.0%} of a share"
        )


if __name__ == "__main__":
    main()
