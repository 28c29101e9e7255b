"""Three ways past the stream modes' ceiling that were measured and not built.

    python bench/synthesis_limits.py deploy/configs/dnn.yaml --costs deploy/costs/dnn.json

1. **Runs gated on a cheap detector.** A target detector runs only when a source detector's
   boxes changed since the target's last run (matched IoU below ``t``), and between runs its
   boxes follow the source's (``follow``). Per target, source and threshold: agreement over every
   frame, the share of frames it runs on, and what that costs per frame. Compare with the
   periodic options of the stream plans (BENCHMARKS.md).
2. **Runs gated on a cheap detector's presence** (a cascade). The target runs on the frames
   where the source finds anything; elsewhere a head fitted on the warm-up draws it from the
   source (mostly: nothing). Per pair, on the warm-up and on the rest: the share of frames the
   target runs on, its agreement over every frame, and what that costs per frame.
3. **Re-weighting heads by how often the source fires.** A head's agreement on the warm-up (the
   first ``--train`` of each stream) and on the rest, split by whether the source found
   anything. If only the share of frames with objects changed after the warm-up, re-weighting
   the warm-up's two figures by the live share would forecast the rest; if the figures
   themselves change, it cannot. The last column fits the same head on the frames it scores: the
   most any head of this form could keep there, whatever the warm-up showed. Last, how often each
   source fires per stream on the warm-up and after it.

Uses the cached outputs and the cost table ``--costs`` names; nothing is trained but the heads.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from mlink.deploy.config import load_config
from mlink.eval.cost_tables import COSTS_HELP, priced_workload
from mlink.eval.temporal.geometry import positions, stream_segments
from mlink.eval.workload import Workload, stream_split
from mlink.linkstore.boxlinks import BoxHead, as_boxes, finds_anything, fit_box_head, follow
from mlink.linkstore.metrics import box_agreement
from mlink.linkstore.streamerror import between_streams

THRESHOLDS = (0.3, 0.5, 0.7, 0.85)


def gated(wl: Workload, source: str, target: str, threshold: float) -> tuple[float, float]:
    """Agreement and run share of ``target`` run when ``source`` changed, followed otherwise."""
    out, agree, runs = wl.outputs, [], 0
    every = range(len(wl.streams))
    for frames in stream_segments(wl.streams, positions(wl.streams), every):
        then_t = then_s = None
        for i in frames:
            now_s = as_boxes(out[source][i])
            changed = then_s is None or box_agreement(then_s, now_s) < threshold
            if changed:
                then_t, then_s = as_boxes(out[target][i]), now_s
                runs += 1
                agree.append(1.0)
            else:
                agree.append(box_agreement(follow(then_t, then_s, now_s), out[target][i]))
    return float(np.mean(agree)), runs / len(agree)


def presence_gated(
    wl: Workload, source: str, target: str, head: BoxHead, frames: Sequence[int]
) -> tuple[float, float]:
    """Agreement and run share of ``target`` run where ``source`` fires, the head elsewhere."""
    out, agree, runs = wl.outputs, [], 0
    for i in frames:
        if finds_anything(out[source][i]):
            runs += 1
            agree.append(1.0)
        else:
            agree.append(box_agreement(head.predict(out[source][i]), out[target][i]))
    return float(np.mean(agree)), runs / len(agree)


def _agreements(
    wl: Workload, source: str, target: str, head: BoxHead, frames: Sequence[int]
) -> np.ndarray:
    out = wl.outputs
    return np.array([box_agreement(head.predict(out[source][i]), out[target][i]) for i in frames])


def head_split(
    wl: Workload, source: str, target: str, train: Sequence[int], rest: Sequence[int]
) -> list[str]:
    """Rows: the warm-up head's agreement where the source fires and where it does not."""
    out = wl.outputs
    head = fit_box_head([out[source][i] for i in train], [out[target][i] for i in train])
    rows = []
    for name, frames in (("warm-up", train), ("rest", rest)):
        scores = _agreements(wl, source, target, head, frames)
        # the same head form fitted on the frames it is scored on: what no warm-up can beat
        # (on the warm-up that is the warm-up's own head, already scored)
        if frames is train:
            ceiling = scores
        else:
            best = fit_box_head([out[source][i] for i in frames], [out[target][i] for i in frames])
            ceiling = _agreements(wl, source, target, best, frames)
        fires = np.array([finds_anything(out[source][i]) for i in frames])
        rows.append(
            f"| {source} -> {target} | {name} | {fires.mean():.0%} | {scores[fires].mean():.3f} "
            f"| {scores[~fires].mean():.3f} | {scores.mean():.3f} | {ceiling[fires].mean():.3f} |"
        )
    return rows


def firing_rows(wl: Workload, source: str, train: Sequence[int], rest: Sequence[int]) -> list[str]:
    """Rows: per stream, how often ``source`` fires on its warm-up and on the rest; then all
    streams, with the warm-up share's standard error counting each stream as one draw."""
    fires = np.array([finds_anything(o) for o in wl.outputs[source]], dtype=float)
    names = list(dict.fromkeys(wl.streams))
    stream_of = np.array([names.index(s) for s in wl.streams])
    warm, later = np.asarray(train, dtype=np.int64), np.asarray(rest, dtype=np.int64)
    rows = []
    for k, name in enumerate(names):
        w, r = warm[stream_of[warm] == k], later[stream_of[later] == k]
        share = [f"{fires[x].mean():.0%}" if len(x) else "-" for x in (w, r)]
        rows.append(f"| {source} | {name} | {share[0]} | {share[1]} |")
    se = between_streams(fires[warm], stream_of[warm])
    rows.append(
        f"| {source} | all | {fires[warm].mean():.0%} (± {se:.0%} between streams) "
        f"| {fires[later].mean():.0%} |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a pipeline config with box models, e.g. dnn.yaml")
    parser.add_argument("--train", type=float, default=0.1, help="warm-up share of each stream")
    parser.add_argument("--costs", default="cached", help=COSTS_HELP)
    parser.add_argument(
        "--pairs",
        nargs="+",
        default=[
            "mtcnn_faces_fast:mtcnn_eyes",
            "mtcnn_faces:mtcnn_eyes",
            "mtcnn_faces_fast:yolo_faces_640",
            "yolo_faces:yolo_faces_640",
        ],
        help="SOURCE:TARGET detector pairs",
    )
    args = parser.parse_args()
    config = load_config(args.config)
    wl = priced_workload(config, args.costs)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    print(f"## {wl.name}: runs gated on a cheap detector (every frame scored)\n")
    print("| target | source | change threshold | agreement | runs on | cost per frame |")
    print("|---|---|---|---|---|---|")
    for source, target in pairs:
        ms = float(wl.costs[target].get("ms", 0.0))
        for t in THRESHOLDS:
            agree, share = gated(wl, source, target, t)
            cost = f"{share * ms:.0f} ms"
            print(f"| {target} | {source} | {t} | {agree:.3f} | {share:.0%} | {cost} |")
    train, rest = stream_split(wl.streams, args.train)
    print(f"\n## {wl.name}: runs gated on the source's presence, the warm-up's head elsewhere\n")
    print("| target | source | frames | runs on | agreement | cost per frame |")
    print("|---|---|---|---|---|---|")
    for source, target in pairs:
        ms = float(wl.costs[target].get("ms", 0.0))
        head = fit_box_head(
            [wl.outputs[source][i] for i in train], [wl.outputs[target][i] for i in train]
        )
        for name, frames in (("warm-up", train), ("rest", rest)):
            agree, share = presence_gated(wl, source, target, head, frames.tolist())
            cost = f"{share * ms:.0f} ms"
            print(f"| {target} | {source} | {name} | {share:.0%} | {agree:.3f} | {cost} |")
    print(f"\n## {wl.name}: a head fitted on the warm-up, split by whether its source fires\n")
    print(
        "| head | frames | source fires on | agreement there | where it does not | all "
        "| fitted on these frames: agreement where it fires |"
    )
    print("|---|---|---|---|---|---|---|")
    for source, target in pairs:
        print("\n".join(head_split(wl, source, target, train.tolist(), rest.tolist())))
    print(f"\n## {wl.name}: how often each source fires, per stream, on the warm-up and after\n")
    print("| source | stream | warm-up | rest |")
    print("|---|---|---|---|")
    for source in dict.fromkeys(source for source, _ in pairs):
        print("\n".join(firing_rows(wl, source, train.tolist(), rest.tolist())))


if __name__ == "__main__":
    main()
