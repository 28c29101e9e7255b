"""How long a pipeline's first link training takes, trained one link set at a time and side by
side in helper processes (``links.training_processes``), and that both make the same links.

    python bench/first_training.py deploy/configs/video-demo.yaml [--processes 1 2] [--repeats 2]

With stream synthesis a cold pipeline's first links train twice: quickly at
``links.first_epochs``, which ends the warm-up's hold, then in full; both are timed ("quick" and
"full" rows).

The job is the one a worker's trainer hands its training process after the warm-up: the
config's models on the first ``warmup_frames / cameras`` frames of each camera (the cached full
run of ``mlink run``; computed once if absent), the config's recipe and ensemble, stream
synthesis if the config plans per stream. Each row starts a warm training process (its helpers'
torch already imported, as a worker's is after the warm-up), times ``repeats`` jobs in it at nice
10 and closes it; rows are interleaved by repeat, since the machine may be shared. The last
column says whether the row's bundle equals the first row's, tensor for tensor.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mlink.deploy.config import PipelineConfig, load_config
from mlink.deploy.source import iter_source
from mlink.eval.run import full_run
from mlink.eval.streaming.live import backlog_warmup
from mlink.operators.training_process import TrainingJob, TrainingProcess, TrainingSettings


def warmup_job(config: PipelineConfig) -> TrainingJob:
    frames = list(iter_source(config.source))
    workload = full_run(config, frames)
    links = config.operator_settings().links
    cameras = sorted(set(workload.streams))
    per_camera = max(1, links.warmup_frames // len(cameras))
    warmup = backlog_warmup(workload, dict.fromkeys(cameras, per_camera))
    groups = [workload.streams[i] for i in warmup]
    seqs = [groups[:k].count(g) for k, g in enumerate(groups)]  # the place in its stream
    return TrainingJob(
        specs=workload.specs,
        outputs=workload.subset(warmup),
        config=links.train,
        ensemble=links.ensemble,  # type: ignore[arg-type]
        measured_costs={m: {"ms": c["ms"]} for m, c in workload.costs.items()},
        groups=groups,
        seqs=seqs if links.stream else None,
        cascades=links.cascades,
        balance_streams=links.balance_streams,
    )


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[n].keys() == b[n].keys() and all(a[n][p].equal(b[n][p]) for p in a[n]) for n in a
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.config)
    job = warmup_job(config)
    links = config.operator_settings().links
    quick = job.quick(links.first_epochs) if links.stream else None
    jobs = {"full": job} if quick is None else {"quick": quick, "full": job}
    print(f"{len(job.groups or [])} warm-up samples of {len(set(job.groups or []))} cameras")
    rows = [(kind, p) for kind in jobs for p in args.processes]
    seconds: dict[tuple[str, int], list[float]] = {row: [] for row in rows}
    reference: dict[str, dict] = {}
    equal = dict.fromkeys(rows, True)
    for _ in range(args.repeats):
        for p in args.processes:
            process = TrainingProcess(TrainingSettings(processes=p)).start()
            time.sleep(5.0 if TrainingSettings(processes=p).helpers() else 0.0)  # helpers up
            try:
                for kind, this in jobs.items():
                    outcome = process.train(this)
                    seconds[kind, p].append(outcome.seconds)
                    reference.setdefault(kind, outcome.tensors)  # type: ignore[arg-type]
                    equal[kind, p] &= same(reference[kind], outcome.tensors)  # type: ignore[arg-type]
            finally:
                process.close(wait=False)
    print("| links | epochs | training processes | seconds (each repeat) | median "
          "| same links as the first row of its kind |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for kind, p in rows:
        label = f"{p} (auto: {TrainingSettings(processes=p).helpers() or 1})" if p == 0 else p
        runs = ", ".join(f"{v:.1f}" for v in seconds[kind, p])
        epochs = jobs[kind].config.epochs
        median = statistics.median(seconds[kind, p])
        print(f"| {kind} | {epochs} | {label} | {runs} | {median:.1f} | {equal[kind, p]} |")


if __name__ == "__main__":
    main()
