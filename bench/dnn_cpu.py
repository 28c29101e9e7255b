"""CPU time against wall time per model of the DNN workload, to tell model cost from machine load.

    python bench/dnn_cpu.py [--every 10]

The output cache records wall time per call (what a worker waits for). On a shared machine that
is inflated by whatever else runs; the thread's CPU time (``time.thread_time``) is not. Every
model runs single-threaded (OpenCV, torch and onnxruntime on one thread) on every ``every``-th
frame of the default DNN source, after one untimed warm-up call.
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import torch

from mlink.eval.workloads import dnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=10, help="time every n-th frame")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    frames = [f for i, (_, f) in enumerate(dnn.DnnFrames()) if i % args.every == 0]
    print(f"{len(frames)} frames, load average {os.getloadavg()[0]:.1f} at start")
    total_cpu = total_wall = 0.0
    for name in dnn.DEFAULT_MODELS:
        model = dnn.model(name)
        model(frames[0])
        cpu = wall = 0.0
        for frame in frames:
            c, w = time.thread_time(), time.perf_counter()
            model(frame)
            cpu += time.thread_time() - c
            wall += time.perf_counter() - w
        cpu, wall = cpu / len(frames) * 1000, wall / len(frames) * 1000
        total_cpu, total_wall = total_cpu + cpu, total_wall + wall
        print(f"{name:<17} cpu {cpu:7.1f} ms  wall {wall:7.1f} ms  ({wall / cpu:.1f}x)", flush=True)
    print(f"{'all':<17} cpu {total_cpu:7.1f} ms  wall {total_wall:7.1f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
