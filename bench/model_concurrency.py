"""Does running a frame's models concurrently beat running them one after another?

    python bench/model_concurrency.py [--frames 64] [--batch 8]

On the video demo's OpenCV models and its first frames, with the schedule of a typical budgeted
plan (``PLAN``: model -> runs on every Nth frame), it times the models one after another per
frame (what the naive pipeline does) and concurrently, one thread per model, per batch of
frames (what the frame operator does), in ms per frame.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from mlink.eval.workloads.video import frames, model

PLAN = {
    "face_default": 1,
    "eyes": 1,
    "frame_stats": 1,
    "face_alt2": 9,
    "face_alt2_fast": 14,
    "eyes_in_faces": 16,
    "hog_people_fast": 16,
}


def run_all(fn, images: list) -> None:
    for image in images:
        fn(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    images = [im for _, im in list(frames(every=3, interleave=True))[: args.frames]]
    models = {name: model(name=name) for name in PLAN}
    for fn in models.values():
        fn(images[0])  # untimed first call

    start = time.perf_counter()
    for i, image in enumerate(images):
        for name, every in PLAN.items():
            if i % every == 0:
                models[name](image)
    one_by_one = (time.perf_counter() - start) * 1000 / len(images)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(PLAN)) as pool:
        for b in range(0, len(images), args.batch):
            rows = range(b, min(b + args.batch, len(images)))
            jobs = {n: [images[i] for i in rows if i % every == 0] for n, every in PLAN.items()}
            calls = [pool.submit(run_all, models[n], todo) for n, todo in jobs.items() if todo]
            for call in calls:
                call.result()
    concurrent = (time.perf_counter() - start) * 1000 / len(images)
    print(
        f"{len(images)} frames: one after another {one_by_one:.1f} ms/frame, "
        f"concurrently in batches of {args.batch} {concurrent:.1f} ms/frame"
    )


if __name__ == "__main__":
    main()
