"""The Node client (clients/node) against our records and a live pipeline: no Python of ours on
the Node side.

- Node decodes every dtype our records carry as Python wrote them (no broker).
- Frame envelopes produced by Node get one result each, with provenance, read back by Node
  (a real faust worker on the session's Tansu broker, real digits models and links).
- Raw JPEGs produced by Node onto a camera topic (``source: {topic, format: image}``) get one
  result each: xfail until the planner consumes ``source.topic``.

The npm packages are installed by the ``node_client`` fixture (``npm ci`` into the ignored
``clients/node/node_modules``, again only when package-lock.json changes). The tests skip only
when ``node`` is missing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlink.deploy.runner import ResultCollector
from mlink.topics.codec import encode_record
from mlink.topics.records import FrameResult, ModelResult
from tests.conftest import NO_NODE, NODE, NODE_CLIENT, FaustWorker
from tests.digits_pipeline import (
    check_provenance,
    digit_files,
    make_camera_topic,
    start_worker,
    wait_for_links,
    write_config,
)

pytestmark = pytest.mark.skipif(NODE is None, reason=NO_NODE)


def run_node(client: Path, args: list[str], timeout: float) -> list[dict[str, Any]]:
    """Run the client script; return its stdout JSON lines (stderr in the failure message)."""
    done = subprocess.run(
        [NODE, str(client / "mlink-client.mjs"), *args],  # type: ignore[list-item]
        cwd=client,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"node mlink-client.mjs {' '.join(args)} exited {done.returncode}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


# -- decoding, no broker -------------------------------------------------------------------------


def test_node_decodes_the_arrays_and_provenance_python_writes(
    node_client: Path, tmp_path: Path
) -> None:
    outputs = {
        "probs": np.array([0.25, 0.75], "<f4"),
        "matrix": np.arange(6, dtype="<f8").reshape(2, 3) / 4,
        "big_endian": np.array([[1.5], [-2.0]], ">f4"),
        "tokens": np.array([3, 2**40, -7], "<i8"),
        "count": np.array(4.0, "<f4"),
        "pixels": np.array([0, 255], "|u1"),
        "flags": np.array([True, False]),
        "half": np.array([0.5, -1.0, 65504.0], "<f2"),
        "boxes": np.zeros((0, 5), "<f4"),
    }
    executed = [
        ModelResult(model=name, output=array, status="executed", elapsed_ms=1.0)
        for name, array in outputs.items()
    ]
    synthesized = ModelResult(
        model="synth",
        output=np.array([0.5, 0.5], "<f4"),
        status="synthesized",
        link_version=7,
        sources=("probs",),
        agreement=0.875,
    )
    gone = ModelResult(model="gone", output=np.zeros(0, "<f4"), status="missing", error="timeout")
    results = (*executed, synthesized, gone)
    record = FrameResult(
        frame_id="cam-1:5",
        stream_id="cam-1",
        seq=5,
        epoch=2,
        results=results,
        degraded=True,
        emitted_at=10.0,
        probe=False,
    )
    path = tmp_path / "result.msgpack"
    path.write_bytes(encode_record(record))
    wire = json.dumps((NODE_CLIENT / "mlink-wire.mjs").as_uri())
    script = (
        f"import {{readFileSync}} from 'node:fs';"
        f"import {{decodeRecord, summarizeResult}} from {wire};"
        f"const r = decodeRecord(readFileSync({json.dumps(str(path))}), 'frame_result');"
        f"console.log(JSON.stringify(summarizeResult(r)));"
    )
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["frame_id"], summary["seq"], summary["degraded"]) == ("cam-1:5", 5, True)
    for name, array in outputs.items():
        assert summary["models"][name]["status"] == "executed"
        assert summary["models"][name]["output"] == array.tolist(), name
    assert summary["models"]["synth"] == {
        "status": "synthesized",
        "link_version": 7,
        "sources": ["probs"],
        "agreement": 0.875,
        "error": None,
        "output": [0.5, 0.5],
    }
    assert summary["models"]["gone"]["status"] == "missing"
    assert summary["models"]["gone"]["error"] == "timeout"


# -- a live pipeline -----------------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.slow
def test_node_frame_envelopes_get_one_result_each_with_provenance(
    broker: Any, faust_worker: Callable[..., FaustWorker], node_client: Path, tmp_path: Path
) -> None:
    path, config = write_config(
        tmp_path, "frames", {"factory": "mlink.eval.workloads.digits:frames"}, warmup=8
    )
    names = config.topics.names()
    worker = start_worker(faust_worker, path, config, broker.bootstrap)
    files = digit_files(tmp_path, 24)
    broker_args = ["--broker", broker.bootstrap]
    frames = ["--format", "frame", "--topic", names.frames, "--stream", "node-cam", *files]
    # warm-up: every frame runs every model until links are trained on 8 of them
    warmup = run_node(node_client, [*broker_args, "produce", "--count", "10", *frames], 60)
    assert warmup == [{"produced": [f"node-cam:{i}" for i in range(10)]}]
    wait_for_links(worker)
    collector = ResultCollector(broker.bootstrap, names.results)
    try:
        lines = run_node(
            node_client,
            [
                *(*broker_args, "run", "--results", names.results, "--count", "16"),
                *("--first-seq", "10", "--timeout", "120", *frames),
            ],
            240,
        )
        ids = [f"node-cam:{i}" for i in range(10, 26)]
        assert sorted(line["frame_id"] for line in lines) == sorted(ids)  # one result per frame
        check_provenance(lines, config)
        synthesized = [
            line
            for line in lines
            if any(e["status"] == "synthesized" for e in line["models"].values())
        ]
        assert synthesized, "no result after the links were trained synthesized a model"
        for line in synthesized:
            assert line["models"]["parity_logreg"]["status"] == "executed"
        # Node decoded exactly what Python decodes
        assert collector.wait_for(set(ids), 60)
        for line in lines:
            python = collector.results[line["frame_id"]]
            for r in python.results:
                assert line["models"][r.model]["status"] == r.status
                assert np.allclose(line["models"][r.model]["output"], r.output.tolist())
    finally:
        collector.close()


@pytest.mark.broker
@pytest.mark.slow
def test_node_raw_jpegs_on_a_camera_topic_get_one_result_each(
    broker: Any, faust_worker: Callable[..., FaustWorker], node_client: Path, tmp_path: Path
) -> None:
    cams = make_camera_topic(broker)
    path, config = write_config(tmp_path, "cams", {"topic": cams, "format": "image"}, warmup=1000)
    names = config.topics.names()
    start_worker(faust_worker, path, config, broker.bootstrap)
    files = digit_files(tmp_path, 12, ".jpg")
    lines = run_node(
        node_client,
        [
            *("--broker", broker.bootstrap, "run", "--format", "image", "--topic", cams),
            *("--stream", "gate-7", "--results", names.results, "--count", "12"),
            *("--timeout", "120", *files),
        ],
        240,
    )
    assert len(lines) == 12
    assert all(line["frame_id"].startswith(f"{cams}:") for line in lines)  # topic:partition:offset
    assert {line["stream_id"] for line in lines} == {"gate-7"}  # the record key
    check_provenance(lines, config)
