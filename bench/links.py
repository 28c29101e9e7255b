"""Link training time and link inference throughput on the digits workload.

    python bench/links.py [--workload digits|video] [--json]

Training: all 42 pairwise links of the 7-model digits set with the paper's recipe (RMSprop,
lr 0.01, 100 epochs, batch 32) on the first 10% of the stream, two ways in the same run:
one link at a time (the baseline, what a per-link training loop does) and all links into a
target at once as one stacked network (what ``LinkSet.train`` does).

Inference: synthesized outputs per second for one target from all its sources through the
ensemble, for a single frame at a time and for batches, and what that costs compared with the
models it replaces (their measured ms per frame).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mlink.eval.demo import digits_workload
from mlink.eval.workload import stream_split
from mlink.linkstore.links import VecToVecLink
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.training import TrainConfig, split_indices, torch_threads, train_single
from mlink.topics.specs import encode_batch


def train_one_by_one(specs, outputs, config: TrainConfig) -> float:
    """The baseline: every link trained alone with the same recipe and data."""
    names = list(specs)
    n = len(outputs[names[0]])
    enc = {m: encode_batch(specs[m], outputs[m]) for m in names}
    train_idx, val_idx = split_indices(n, config.val_fraction, config.seed)
    start = time.perf_counter()
    with torch_threads(1):
        for t in names:
            for s in names:
                if s == t:
                    continue
                if specs[s].kind == "sequence" or specs[t].kind == "sequence":
                    continue
                link = VecToVecLink(
                    specs[s].link_dim,
                    specs[t].link_dim,
                    config.hidden_mult,
                    config.dropout,
                    config.min_hidden,
                )
                train_single(link, enc[s], enc[t], specs[t].link_task, train_idx, val_idx, config)
    return time.perf_counter() - start


def inference_rates(linkset: LinkSet, outputs, target: str, repeats: int = 300) -> dict:
    sources = linkset.sources_of(target)
    single = {s: [outputs[s][0]] for s in sources}
    linkset.synthesize(target, single, trusted=True)
    start = time.perf_counter()
    for _ in range(repeats):
        linkset.synthesize(target, single, trusted=True)
    single_s = (time.perf_counter() - start) / repeats
    batch = {s: outputs[s][:256] for s in sources}
    linkset.synthesize(target, batch, trusted=True)
    start = time.perf_counter()
    for _ in range(20):
        linkset.synthesize(target, batch, trusted=True)
    batch_s = (time.perf_counter() - start) / 20 / 256
    return {
        "target": target,
        "sources": len(sources),
        "single_per_s": 1 / single_s,
        "single_ms": single_s * 1000,
        "batch256_per_s": 1 / batch_s,
        "batch256_ms_per_output": batch_s * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workload", choices=["digits", "video"], default="digits")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.workload == "video":
        from mlink.eval.workloads import video

        workload = video.workload(progress=False)  # cached outputs; computed once (~7 min)
    else:
        workload = digits_workload()
    train_idx, _ = stream_split(workload.streams, 0.1)
    outputs = workload.subset(train_idx)
    config = TrainConfig()
    start = time.perf_counter()
    linkset = LinkSet.train(workload.specs, outputs, config, progress=False)
    stacked_s = time.perf_counter() - start
    baseline_s = train_one_by_one(workload.specs, outputs, config)
    rates = [inference_rates(linkset, workload.outputs, t) for t in workload.models]
    model_ms = {m: c["ms"] for m, c in workload.costs.items()}
    report = {
        "links": len(linkset.links),
        "train_frames": len(train_idx),
        "epochs": config.epochs,
        "train_stacked_s": stacked_s,
        "train_one_by_one_s": baseline_s,
        "speedup": baseline_s / stacked_s,
        "inference": rates,
        "model_ms": model_ms,
        "link_ms_vs_model_ms": {r["target"]: r["single_ms"] / model_ms[r["target"]] for r in rates},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{workload.name}: training {report['links']} links, {config.epochs} epochs, batch "
        f"{config.batch_size}, on {len(train_idx)} frames (10% of each stream), 1 thread:"
    )
    print(f"  one link at a time (baseline): {baseline_s:7.2f} s")
    print(f"  stacked per target (LinkSet):  {stacked_s:7.2f} s   ({report['speedup']:.1f}x)")
    print(f"synthesis of one target from all {len(workload.models) - 1} other models:")
    for r in rates:
        print(
            f"  {r['target']:14s} single {r['single_per_s']:8.0f}/s ({r['single_ms']:.3f} ms)  "
            f"batch-256 {r['batch256_per_s']:9.0f}/s   model itself "
            f"{model_ms[r['target']]:.3f} ms/frame"
        )
    share = np.mean(list(report["link_ms_vs_model_ms"].values()))
    print(f"  single-frame synthesis costs {share:.1%} of running the model it replaces (mean)")


if __name__ == "__main__":
    main()
