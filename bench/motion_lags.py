"""How much moving old boxes with the picture keeps, against reusing them as they were, by lag.

    python bench/motion_lags.py deploy/configs/dnn.yaml

Over every frame of every stream of the config's cached workload: each box model's output ``d``
frames back, reused as it was (``reuse``) and moved by the motion measured between the two
frames (``flow``, :mod:`mlink.linkstore.motion`), scored against the real output by matched
IoU. No plan and no training split: it tells what the mode can keep, not what a plan picks.
"""

from __future__ import annotations

import argparse

import numpy as np

from mlink.deploy.config import load_config
from mlink.eval.config_workload import load_workload
from mlink.eval.motion_poses import source_poses
from mlink.eval.outputs import DEFAULT_CACHE
from mlink.linkstore.metrics import box_agreement
from mlink.linkstore.motion import moved_since
from mlink.topics.specs import BoxesSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a pipeline config, e.g. deploy/configs/dnn.yaml")
    parser.add_argument("--lags", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    config = load_config(args.config)
    wl = load_workload(config, progress=True, cache_dir=DEFAULT_CACHE)
    motion = source_poses(config, DEFAULT_CACHE, progress=True)
    streams = np.asarray(wl.streams)
    tracks = len({p.track for p in motion.poses})
    print(f"{config.name}: {wl.n_frames} frames, {len(set(wl.streams))} streams, {tracks} tracks,")
    print(f"motion {motion.ms:.1f} ms a frame (all models {wl.total_cost():.0f} ms)\n")
    print("| model | " + " | ".join(f"lag {d}: reuse / flow" for d in args.lags) + " |")
    print("|---" * (len(args.lags) + 1) + "|")
    for m in wl.models:
        if not isinstance(wl.specs[m], BoxesSpec):
            continue
        out = wl.outputs[m]
        cells = []
        for d in args.lags:
            reuse, flow = [], []
            for i in range(d, wl.n_frames):
                j = i - d
                if streams[j] != streams[i]:
                    continue
                reuse.append(box_agreement(out[j], out[i]))
                moved = moved_since(out[j], motion.poses[j], motion.poses[i])
                flow.append(box_agreement(out[j] if moved is None else moved, out[i]))
            cells.append(f"{np.mean(reuse):.1%} / {np.mean(flow):.1%}")
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
