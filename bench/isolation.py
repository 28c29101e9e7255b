"""What model isolation and out-of-process training cost and buy, measured in one run.

    python bench/isolation.py transport [--calls 300] [--json]
    python bench/isolation.py restart [--json]
    python bench/isolation.py training [--samples 90] [--repeats 2] [--model NAME] [--json]

transport: time per call of a near-free model (parity of the first pixel) on a 720p RGB frame
and on an 8x8 frame, alone and in batches of 8, three ways: called directly (ModelRunner), on
the model's thread (ThreadExecutor) and in a child process (ProcessExecutor: frames as pickle-5
out-of-band buffers, through a shared memory file from 256 KB, else the socket). The process
column minus the thread column, per frame, is what isolation adds.

restart: how long an isolated model is unavailable after a segfault (crash to the next served
call, with backoff 0.05, 0.1, 0.2 s on three crashes in a row), for the spawn and forkserver
start methods, and the first start.

training: the worker's event-loop lag (a 10 ms asyncio ticker: how late each tick fires) and the
digits models' throughput (all 7, or one with ``--model``, each on its ThreadExecutor, batches
of 8 frames, as a worker runs them) while the digits links are trained on the first
``--samples`` stream frames with the config's recipe: no training (baseline, as long as the
thread run), training on a thread of this process (today's trainer), in a TrainingProcess at
nice 10 and at nice 0 (separates the GIL from the priority), and the thread and nice-10 process
without models (lag from training alone). Scenarios are interleaved and each row lists every
repeat, with the 1-minute load average when it started: the machine is shared, so compare
within a repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mlink.operators.executor import ThreadExecutor
from mlink.operators.isolation import ProcessExecutor
from mlink.operators.model_runner import ModelRunner
from mlink.operators.model_settings import ExecutorSettings, IsolationSettings, ModelFactory
from mlink.topics.specs import VectorSpec

# This module is the main module of the children it isolates (spawn re-imports it there), so
# it imports the heavy parts (config, workloads, torch) only in the functions that need them.

SPEC = VectorSpec(2, "softmax")
SHAPES = {"720p rgb": (720, 1280, 3), "8x8": (8, 8)}


def first_pixel_parity(frame: np.ndarray) -> np.ndarray:
    return np.eye(2, dtype=np.float32)[int(frame.flat[0]) % 2]


def parity_factory() -> Callable[[np.ndarray], np.ndarray]:
    return first_pixel_parity


def segfault_on_seven(frame: np.ndarray) -> np.ndarray:
    if int(frame.flat[0]) == 7:
        ctypes.string_at(0)
    return first_pixel_parity(frame)


def segfault_factory() -> Callable[[np.ndarray], np.ndarray]:
    return segfault_on_seven


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": ordered[len(ordered) // 2],
        "p90": ordered[int(len(ordered) * 0.9)],
        "max": ordered[-1],
    }


# -- transport ---------------------------------------------------------------------------------


def time_calls(run: Callable[[list[np.ndarray]], Any], frames: list[np.ndarray], calls: int):
    for _ in range(min(20, calls)):
        run(frames)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        outcomes = run(frames)
        times.append((time.perf_counter() - start) * 1e6)
        assert outcomes[0].error is None, outcomes[0].error
    return percentiles(times)


def transport(calls: int) -> list[dict[str, Any]]:
    rows = []
    settings = ExecutorSettings(isolation=IsolationSettings())
    isolated = ProcessExecutor("parity", ModelFactory(parity_factory), SPEC, settings=settings)
    isolated.start()
    threaded = ThreadExecutor("parity", first_pixel_parity, SPEC)
    direct = ModelRunner("parity", first_pixel_parity, SPEC)
    try:
        for label, shape in SHAPES.items():
            for batch in (1, 8):
                frames = [
                    np.random.default_rng(i).integers(0, 255, shape, dtype=np.uint8)
                    for i in range(batch)
                ]
                n = calls if shape != (8, 8) else calls * 5
                row = {"frame": label, "frames_per_call": batch, "calls": n}
                for name, run in (
                    ("direct", direct.run),
                    ("thread", threaded.run),
                    ("process", isolated.run),
                ):
                    row[name] = time_calls(run, frames, n)
                row["added_by_isolation_us_per_frame"] = (
                    row["process"]["p50"] - row["thread"]["p50"]
                ) / batch
                rows.append(row)
    finally:
        isolated.close()
        threaded.close()
    return rows


# -- restart -----------------------------------------------------------------------------------


def restart(trials: int = 3) -> list[dict[str, Any]]:
    rows = []
    factory = ModelFactory(segfault_factory)
    for method in ("spawn", "forkserver"):
        iso = IsolationSettings(start_method=method, backoff_initial_s=0.05)  # type: ignore[arg-type]
        started = time.perf_counter()
        executor = ProcessExecutor("seg", factory, SPEC, settings=ExecutorSettings(isolation=iso))
        executor.start()
        first_start = time.perf_counter() - started
        ok, bad = [np.full((8, 8), 1, np.uint8)], [np.full((8, 8), 7, np.uint8)]
        gaps = []
        try:
            for _ in range(trials):
                crash = time.perf_counter()
                assert "SIGSEGV" in executor.run(bad)[0].error
                while executor.run(ok)[0].error is not None:
                    time.sleep(0.005)
                gaps.append(time.perf_counter() - crash)
                time.sleep(0.2)
        finally:
            executor.close()
        rows.append(
            {
                "start_method": method,
                "first_start_s": first_start,
                "unavailable_after_crash_s": gaps,
            }
        )
    return rows


# -- training ----------------------------------------------------------------------------------


async def measure_while(
    work: Callable[[], Awaitable[Any]], executors: list[ThreadExecutor], frames: list[np.ndarray]
) -> dict[str, Any]:
    """Run ``work`` while a 10 ms ticker and the models run; lag and model frames/s."""
    lags: list[float] = []
    served = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        expected = loop.time() + 0.01
        while not stop.is_set():
            await asyncio.sleep(max(0.0, expected - loop.time()))
            now = loop.time()
            lags.append((now - expected) * 1000)
            expected = max(expected + 0.01, now)

    async def models() -> None:
        nonlocal served
        while executors and not stop.is_set():
            results = await asyncio.gather(*(e.arun(frames) for e in executors))
            served += (
                len(frames)
                * sum(all(o.error is None for o in r) for r in results)
                // len(executors)
            )

    tasks = [asyncio.create_task(ticker()), asyncio.create_task(models())]
    started = time.perf_counter()
    result = await work()
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    return {
        "seconds": elapsed,
        "lag_ms": {**percentiles(lags), "p99": sorted(lags)[int(len(lags) * 0.99)]},
        "model_frames_per_s": served / elapsed,
        "result": result,
    }


def training(samples: int, repeats: int, only: str | None = None) -> dict[str, Any]:
    from mlink.deploy.config import load_config
    from mlink.deploy.examples import digits
    from mlink.eval.demo import digits_workload
    from mlink.operators.trainer import train_bundle
    from mlink.operators.training_process import TrainingJob, TrainingProcess, TrainingSettings

    workload = digits_workload()
    config = load_config("deploy/configs/digits.yaml")
    train_config = config.links.train_config()
    outputs = {m: v[:samples] for m, v in workload.outputs.items()}
    costs = {m: dict(c) for m, c in workload.costs.items()}
    frames = list(digits.frames(8))
    chosen = [m for m in config.models if only is None or m.name == only]
    if not chosen:
        raise SystemExit(f"--model {only!r} is not a digits model: {config.model_names}")
    executors = [ThreadExecutor(m.name, m.build(), m.spec, batch=m.batch) for m in chosen]
    trainer_thread = ThreadPoolExecutor(1, thread_name_prefix="trainer")
    processes = {
        "process": TrainingProcess().start(),
        "process_nice0": TrainingProcess(TrainingSettings(nice=0)).start(),
    }
    store = tempfile.TemporaryDirectory(prefix="mlink-bench-")
    job = TrainingJob(
        specs=workload.specs,
        outputs=outputs,
        config=train_config,
        ensemble=config.links.ensemble,
        measured_costs=costs,
        store_root=store.name,
    )
    idle_seconds = 20.0

    def in_thread() -> Awaitable[Any]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(
            trainer_thread,
            train_bundle,
            workload.specs,
            outputs,
            train_config,
            config.links.ensemble,
            costs,
        )

    def idle() -> Awaitable[None]:
        return asyncio.sleep(idle_seconds)

    # (name, training, models running beside it); interleaved so that the machine's other load
    # falls on every scenario alike
    plan: list[tuple[str, Callable[[], Awaitable[Any]], bool]] = [
        ("no training", idle, True),
        ("thread", in_thread, True),
        ("process nice 10", lambda: processes["process"].atrain(job), True),
        ("process nice 0", lambda: processes["process_nice0"].atrain(job), True),
        ("thread, no models", in_thread, False),
        ("process nice 10, no models", lambda: processes["process"].atrain(job), False),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in plan}
    try:
        for _ in range(repeats):
            for name, work, with_models in plan:
                load = os.getloadavg()[0]
                used = executors if with_models else []
                run = asyncio.run(measure_while(work, used, frames))
                runs[name].append({**run, "load": load})
                if name == "thread":
                    idle_seconds = run["seconds"]
    finally:
        for process in processes.values():
            process.close()
        trainer_thread.shutdown()
        for e in executors:
            e.close()
        store.cleanup()
    summary = {}
    for name, results in runs.items():
        fps = [r["model_frames_per_s"] for r in results]
        lag_max = [r["lag_ms"]["max"] for r in results]
        summary[name] = {
            "median_model_frames_per_s": round(statistics.median(fps), 1),
            "median_lag_max_ms": round(statistics.median(lag_max), 1),
            "median_lag_p99_ms": round(statistics.median(r["lag_ms"]["p99"] for r in results), 1),
            "seconds": [round(r["seconds"], 1) for r in results],
            "lag_max_ms": [round(r["lag_ms"]["max"], 1) for r in results],
            "lag_p99_ms": [round(r["lag_ms"]["p99"], 1) for r in results],
            "lag_p50_ms": [round(r["lag_ms"]["p50"], 2) for r in results],
            "model_frames_per_s": [round(r["model_frames_per_s"], 1) for r in results],
            "load_avg_1m": [round(r["load"], 1) for r in results],
        }
    models = [m.name for m in chosen]
    return {"samples": samples, "repeats": repeats, "models": models, "scenarios": summary}


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["transport", "restart", "training"])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--samples", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", help="training: run only this digits model beside it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.what == "transport":
        result: Any = transport(args.calls)
    elif args.what == "restart":
        result = restart()
    else:
        result = training(args.samples, args.repeats, args.model)
    if args.json:
        json.dump(result, sys.stdout, indent=1, default=str)
        print()
        return
    if args.what == "transport":
        print(
            f"{'frame':>9} {'n/call':>6} {'direct':>9} {'thread':>9} {'process':>9} {'+/frame':>9}"
        )
        for r in result:
            print(
                f"{r['frame']:>9} {r['frames_per_call']:>6} {r['direct']['p50']:>7.0f}us "
                f"{r['thread']['p50']:>7.0f}us {r['process']['p50']:>7.0f}us "
                f"{r['added_by_isolation_us_per_frame']:>7.0f}us"
            )
    elif args.what == "restart":
        for r in result:
            gaps = ", ".join(f"{g:.2f}" for g in r["unavailable_after_crash_s"])
            print(
                f"{r['start_method']:>10}: first start {r['first_start_s']:.2f} s, "
                f"unavailable after a crash: {gaps} s"
            )
    else:
        print(
            f"digits links on {result['samples']} samples, {result['repeats']} runs each, "
            f"models running: {result['models']}"
        )
        for name, s in result["scenarios"].items():
            print(f"  {name:>26}: " + ", ".join(f"{k}={v}" for k, v in s.items()))


if __name__ == "__main__":
    main()
