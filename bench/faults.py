"""The fault matrix: each fault against a live pipeline, one row per fault.

    python bench/faults.py [--only NAME[,NAME...]] [--json]

Every scenario runs real supervised workers (``mlink.deploy.supervisor``: a worker that dies is
restarted with backoff, as ``mlink run`` does) on an embedded Tansu broker, streams good frames
around the fault and counts, over the frames that entered: results (after dedupe by frame id),
lost (no result), duplicated (a second result), degraded, worker restarts and crash loops.
``tests/test_faults.py`` runs every scenario and checks each row: nothing lost, no crash loop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import msgpack

from mlink.deploy.broker import EmbeddedBroker
from mlink.deploy.runner import read_control
from mlink.linkstore.store import LinkStore

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the harness (bench/), the poison records and misbehaving models
    sys.path.insert(0, str(ROOT))  # (tests/) are imported from the repository root

from bench.fault_harness import (  # noqa: E402
    TRIGGER,
    Pipeline,
    Row,
    config_data,
    model,
    pipeline,
    send_until_epoch,
    wait_epoch,
)

__all__ = ["SCENARIOS", "Row", "main", "replace_with_another_v1", "run"]

MISBEHAVING = "tests.misbehaving_models:misbehaving"
FAST = {
    "parity_logreg": {"kind": "vector", "size": 2, "task": "softmax"},
    "ge5_forest": {"kind": "vector", "size": 2, "task": "softmax"},
}


# -- scenarios -------------------------------------------------------------------------------


def worker_killed(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    data = config_data(tmp, models=[model(m, o) for m, o in FAST.items()], warmup=10_000)
    with pipeline(broker.bootstrap, tmp, data, workers=2) as p:
        ids = p.send(20)
        for _ in range(3):
            victim = p.supervisor.workers[1]
            victim.signal(signal.SIGKILL)
            ids += p.send(20)
            time.sleep(4)
            p.supervisor.wait_ready()
        ids += p.send(20)
        return [p.row("worker SIGKILLed 3 times (2 workers)", ids, 180)]


def stream_worker_killed(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """Stream synthesis (per-frame schedules, each worker's memory of its streams' last runs)
    with a worker SIGKILLed twice: the streams it held move to the other worker, which has no
    memory of them and falls back to heads or priors until their next real runs."""
    models = [model(m, o) for m, o in FAST.items()]
    data = config_data(tmp, models=models, warmup=24, stream=True, probe_stride=3)
    with pipeline(broker.bootstrap, tmp, data, workers=2) as p:
        ids = p.send(32, per_stream=True)
        p.collector.wait_for(set(ids), 120)
        planned = wait_epoch(p, 1)
        ids += p.send(40, per_stream=True)
        for _ in range(2):
            p.supervisor.workers[1].signal(signal.SIGKILL)
            ids += p.send(40, per_stream=True)
            time.sleep(4)
            p.supervisor.wait_ready()
        ids += p.send(40, per_stream=True)
        row = p.row("worker SIGKILLed twice under stream synthesis (2 workers)", ids, 180)
        results = p.collector.results
        synthesized = sum(
            r.status == "synthesized" for f in ids if f in results for r in results[f].results
        )
        row.note = f"{synthesized} outputs synthesized" if planned else "no schedule in time"
        return [row]


def broker_restart(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """A durable broker (Tansu on an S3-compatible store) stopped and started mid-stream."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = {
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": endpoint,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        import boto3

        bucket = f"tansu-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        durable = EmbeddedBroker(storage_engine=f"s3://{bucket}/", env=s3, cluster_id="faults")
        durable.start()
        try:
            data = config_data(tmp, models=[model(m, o) for m, o in FAST.items()], warmup=10_000)
            with pipeline(durable.bootstrap, tmp, data) as p:
                ids = p.send(30)
                p.collector.wait_for(set(ids), 60)
                durable.stop()
                time.sleep(3)
                durable.start()
                ids += p.send(30)
                return [p.row("broker restart (Tansu on S3, durable)", ids, 180)]
        finally:
            durable.stop()
    finally:
        server.stop()


def misbehaving_model(fault: str, isolation: dict | None, note: str) -> Callable[..., list[Row]]:
    def scenario(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
        bad = {
            "name": "flaky",
            "factory": MISBEHAVING,
            "args": {"fault": fault, "trigger": TRIGGER},
            "output": {"kind": "vector", "size": 2, "task": "softmax"},
            "timeout_s": 2.0,
            "isolation": isolation,
            "cost": {"ms": 2.0},
        }
        models = [model(m, o) for m, o in FAST.items()] + [bad]
        data = config_data(tmp, models=models, warmup=10_000)
        env = {"PYTHONPATH": str(ROOT)}  # isolated children import tests.misbehaving_models
        with pipeline(broker.bootstrap, tmp, data, env=env) as p:
            ids = p.send(10) + p.send(40, trigger_at={0, 10, 20})
            p.collector.wait_for(set(ids), 240)
            time.sleep(5)  # time to restart an isolated model
            tail = p.send(10)
            row = p.row(f"{fault} model ({note})", ids + tail, 240)
            results = p.collector.results
            clean = not any(results[f].degraded for f in tail if f in results)
            row.note = f"frames after the fault {'clean' if clean else 'still degraded'}"
            return [row]

    return scenario


def poison_and_forged(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    from tests.test_hardening_e2e import UNDECODABLE, forged_control, poison_records

    data = config_data(tmp, models=[model(m, o) for m, o in FAST.items()], warmup=12)
    rows = []
    with pipeline(broker.bootstrap, tmp, data) as p:
        p.collector.wait_for(set(p.send(16)), 120)
        wait_epoch(p, 1)
        for what, value in poison_records().items():
            p.raw(p.names.frames, value)
            ids = p.send(5) + ([UNDECODABLE[what]] if what in UNDECODABLE else [])
            rows.append(p.row(f"poison: {what}", ids, 90))
        epoch = read_control(p.bootstrap, p.config)[0].epoch
        for what, message in forged_control(epoch).items():
            p.raw(p.names.control, msgpack.packb(message), key=b"forged")
            rows.append(p.row(f"forged control: {what}", p.send(5), 90))
    return rows


def disk_full(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """The link store on a tiny tmpfs, filled up: the first link saves fail with ENOSPC."""
    mount = tmp / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return [
            Row("disk full during a link save", note=f"not measurable here: {done.stderr.strip()}")
        ]
    try:
        filler = mount / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):  # fill it up
            f.write(b"\0" * (2 << 20))
        with open(filler, "r+b") as f:  # leave 16 kB: too little for a link version
            f.truncate(max(0, filler.stat().st_size - 16 * 1024))
        models = [model(m, o) for m, o in FAST.items()]
        data = config_data(tmp, models=models, warmup=12, store=str(mount / "links"), hold_s=5)
        with pipeline(broker.bootstrap, tmp, data) as p:
            ids = p.send(40)
            p.collector.wait_for(set(ids), 120)
            filler.unlink()  # space again: the next retry succeeds
            ids += p.send(40)
            linked = wait_epoch(p, 1, 90)
            ids += p.send(20)
            return [
                p.row(
                    "disk full during a link save",
                    ids,
                    120,
                    note="links saved once space returned" if linked else "no links yet",
                )
            ]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def held_backlog(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """A backlog arrives while the worker holds for its first links, again and again (1 s holds,
    slow training): the frames faust had fetched when a hold paused their partition are
    re-read, not lost."""
    models = [model(m, o) for m, o in FAST.items()]
    data = config_data(tmp, models=models, warmup=8, hold_s=1, epochs=200)
    with pipeline(broker.bootstrap, tmp, data) as p:
        ids = p.send(400)
        return [p.row("backlog during repeated warm-up holds", ids, 240)]


def relearned_row(p: Pipeline, fault: str, damage: Callable[[], None], victim: int) -> Row:
    """Links v1 planned, then ``damage`` done to the store and worker ``victim`` restarted (it
    has no copy of v1 in memory); frames keep coming until the controller has links learned
    again (``relearn_after_s``; no retraining is configured), then 20 more."""
    ids = p.send(16)
    p.collector.wait_for(set(ids), 120)
    wait_epoch(p, 1)
    damage()
    p.supervisor.workers[victim].signal(signal.SIGKILL)
    time.sleep(2)
    p.supervisor.wait_ready()
    ids += p.send(20)
    more, relearned = send_until_epoch(p, 3)  # 2: every model runs; 3: new links
    tail = p.send(20)
    version = read_control(p.bootstrap, p.config)[0].link_version
    row = p.row(fault, ids + more + tail, 180)
    clean = not any(p.collector.results[f].degraded for f in tail if f in p.collector.results)
    row.note = (
        f"planned from v{version} again; frames after it {'clean' if clean else 'degraded'}"
        if relearned
        else "not relearned in time"
    )
    return row


def tampered_bundle(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """The current link version's tensors are altered on disk, then the worker restarts."""

    def tamper() -> None:
        tensors = next((tmp / "links").glob("v*/tensors.safetensors"))
        blob = bytearray(tensors.read_bytes())
        blob[-8:] = bytes(8)  # flip the last weights
        tensors.write_bytes(bytes(blob))

    models = [model(m, o) for m, o in FAST.items()]
    data = config_data(tmp, models=models, warmup=12, relearn_after_s=5)
    with pipeline(broker.bootstrap, tmp, data) as p:
        return [relearned_row(p, "tampered link bundle (worker restarted)", tamper, 0)]


def store_wiped(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """The link store's directory deleted mid-stream (a container restarted without its volume)
    and one of two workers restarted."""
    models = [model(m, o) for m, o in FAST.items()]
    data = config_data(tmp, models=models, warmup=12, relearn_after_s=5)
    with pipeline(broker.bootstrap, tmp, data, workers=2) as p:
        wipe = functools.partial(shutil.rmtree, tmp / "links")
        return [relearned_row(p, "link store wiped (a worker restarted)", wipe, 1)]


def replace_with_another_v1(root: Path) -> None:
    """The store swapped for another pipeline's with the same models: it also has a v1, with
    other weights (ours, nudged), which loads and synthesizes without any error."""
    bundle = LinkStore(root).load(1)
    tensors = {n: {k: t.clone() for k, t in ps.items()} for n, ps in bundle.tensors.items()}
    for params in tensors.values():
        for t in params.values():
            if t.is_floating_point():
                t += 0.25
    shutil.rmtree(root)
    LinkStore(root).save(tensors, bundle.meta.meta)


def store_replaced(broker: EmbeddedBroker, tmp: Path) -> list[Row]:
    """The link store replaced mid-stream by one holding other weights under v1, and one of
    two workers restarted (it loads the foreign v1)."""
    models = [model(m, o) for m, o in FAST.items()]
    data = config_data(tmp, models=models, warmup=12, relearn_after_s=5)
    with pipeline(broker.bootstrap, tmp, data, workers=2) as p:
        swap = functools.partial(replace_with_another_v1, tmp / "links")
        return [relearned_row(p, "link store replaced, other weights as v1", swap, 1)]


SCENARIOS: dict[str, Callable[[EmbeddedBroker, Path], list[Row]]] = {
    "worker-killed": worker_killed,
    "stream-worker-killed": stream_worker_killed,
    "broker-restart": broker_restart,
    "hung-isolated": misbehaving_model("hang", {"backoff_initial_s": 0.2}, "isolated, 2 s timeout"),
    "hung-thread": misbehaving_model("hang", None, "on a thread, 2 s timeout"),
    "leaking-isolated": misbehaving_model(
        "leak", {"max_rss_mb": 400, "backoff_initial_s": 0.2}, "isolated, 400 MB cap"
    ),
    "poison-and-forged": poison_and_forged,
    "disk-full": disk_full,
    "held-backlog": held_backlog,
    "tampered-bundle": tampered_bundle,
    "store-wiped": store_wiped,
    "store-replaced": store_replaced,
}


def run(names: list[str]) -> list[Row]:
    rows: list[Row] = []
    with EmbeddedBroker() as broker:
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.monotonic()
                for row in SCENARIOS[name](broker, Path(tmp)):
                    row.note = (row.note + f" ({time.monotonic() - started:.0f} s)").strip()
                    rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help=f"comma-separated scenarios of {sorted(SCENARIOS)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    if unknown := sorted(set(names) - set(SCENARIOS)):
        parser.error(f"unknown scenario(s) {unknown}; --only takes any of {sorted(SCENARIOS)}")
    rows = run(names)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    columns = (
        "fault",
        "sent",
        "results",
        "lost",
        "duplicated",
        "degraded",
        "dead letters",
        "worker restarts",
        "crash loops",
        "note",
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print(
            f"| {r.fault} | {r.sent} | {r.results} | {r.lost} | {r.duplicated} | {r.degraded} "
            f"| {r.dead_letters} | {r.worker_restarts} | {r.crash_loops} | {r.note} |"
        )


if __name__ == "__main__":
    main()
