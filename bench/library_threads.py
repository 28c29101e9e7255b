"""What a model call costs its calling thread with the libraries' own thread pools, and with one.

    python bench/library_threads.py deploy/configs/dnn.yaml --models face_alt2 upper_body

A worker prices a model by the CPU time of the thread that called it (docs/model-execution.md).
OpenCV and torch can hand part of a call to threads of their own, which that clock does not see.
Per model, on every ``--every``-th frame of the config's source, one model at a time: the mean
wall time and calling-thread CPU time with the libraries' default threads, then with one thread
each (what workers use since ``runtime.model_threads``). With one thread the two clocks agree
and give the model's whole cost; where the default's CPU time is lower, a pool did the rest.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mlink.deploy.config import load_config
from mlink.eval.config_workload import SourceFrames, config_models
from mlink.eval.memory import single_threaded
from mlink.operators.model_runner import ModelRunner


def mean_clocks(runner: ModelRunner, frames: list[np.ndarray]) -> tuple[float, float]:
    """Mean wall and calling-thread CPU ms of one call per frame, as a worker times them."""
    outcomes = [runner.run([frame])[0] for frame in frames]
    return (
        float(np.mean([o.elapsed_ms for o in outcomes])),
        float(np.mean([o.cpu_ms for o in outcomes])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--every", type=int, default=13, help="use every n-th frame")
    parser.add_argument("--models", nargs="+", default=None, help="only these models")
    args = parser.parse_args()
    config = load_config(args.config)
    built = config_models(config)[0]
    names = args.models or list(built)
    unknown = sorted(set(names) - set(built))
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; the config has {sorted(built)}")
    runners = {m: ModelRunner(m, *built[m]) for m in names}
    frames = [f for i, (_, f) in enumerate(SourceFrames(config)) if i % args.every == 0]
    for runner in runners.values():  # untimed first calls (lazy loading, allocations)
        runner.run([frames[0]])
    print(f"{len(frames)} frames of {config.name}, one model at a time\n")
    print("| model | default threads: wall ms | caller's CPU ms | one thread: wall ms | CPU ms |")
    print("|---|---|---|---|---|")
    for m, runner in runners.items():
        pooled = mean_clocks(runner, frames)  # the libraries' defaults
        with single_threaded():
            single = mean_clocks(runner, frames)
        print(f"| {m} | {pooled[0]:.1f} | {pooled[1]:.1f} | {single[0]:.1f} | {single[1]:.1f} |")


if __name__ == "__main__":
    main()
