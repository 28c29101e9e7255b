"""What a pipeline run saved and kept, measured against a full run of every model.

The full run is every model's real output on the very frames the workers saw (after the same
JPEG/PNG round trip), computed offline and cached, so the comparison is exact.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlink.deploy.config import PipelineConfig
from mlink.deploy.runner import RunReport
from mlink.eval.workload import Workload
from mlink.linkstore.metrics import agreement
from mlink.linkstore.store import LinkStore
from mlink.topics.frames import decode_frame, encode_frame


@dataclass(slots=True)
class RunSummary:
    frames: int
    results: int
    degraded: int
    duplicates: int
    seconds: float
    throughput_fps: float
    latency_p50_ms: float
    latency_p99_ms: float
    executed: dict[str, int]
    synthesized: dict[str, int]
    agreement: dict[str, float]
    accuracy: float
    compute_saved: float
    steady_accuracy: float
    steady_compute_saved: float
    link_versions: list[int]
    final_active: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def wire_frames(config: PipelineConfig, frames: list[tuple[str, np.ndarray]]) -> list:
    """The frames as a worker decodes them (after the source's encoding round trip)."""
    src = config.source
    return [
        (stream, decode_frame(encode_frame(img, stream, 0, 0.0, src.encoding, src.jpeg_quality)))
        for stream, img in frames
    ]


def frame_ids(frames: list[tuple[str, np.ndarray]]) -> list[str]:
    seqs: dict[str, int] = defaultdict(int)
    ids = []
    for stream, _ in frames:
        ids.append(f"{stream}:{seqs[stream]}")
        seqs[stream] += 1
    return ids


def summarize(
    config: PipelineConfig, report: RunReport, full: Workload, ids: list[str]
) -> RunSummary:
    """Compare every result with the full run; cost executed models and links as measured."""
    specs = config.specs()
    index = {f: i for i, f in enumerate(ids)}
    costs = {m: full.costs[m]["ms"] for m in config.model_names}
    for m, declared in config.declared_costs().items():
        costs[m] = declared.get("ms", costs[m])
    link_ms = _link_costs(config)
    total_per_frame = sum(costs.values())
    per_model: dict[str, list[float]] = defaultdict(list)
    executed: dict[str, int] = defaultdict(int)
    synthesized: dict[str, int] = defaultdict(int)
    frame_cost: dict[str, float] = {}
    frame_acc: dict[str, float] = {}
    for fid, result in report.results.items():
        i = index.get(fid)
        if i is None:
            continue
        spent, accs = 0.0, []
        for r in result.results:
            if r.status == "executed":
                executed[r.model] += 1
                spent += costs[r.model]
                score = 1.0
            elif r.status == "synthesized":
                synthesized[r.model] += 1
                spent += sum(link_ms.get((s, r.model), 0.0) for s in r.sources)
                score = float(agreement(specs[r.model], [r.output], [full.outputs[r.model][i]])[0])
            else:
                score = 0.0
            per_model[r.model].append(score)
            accs.append(score)
        frame_cost[fid] = spent
        frame_acc[fid] = float(np.mean(accs))
    steady = [f for f, r in report.results.items() if r.epoch > 0 and f in frame_cost]
    lat = report.latencies_ms()
    last = max(report.results.values(), key=lambda r: (r.epoch, r.emitted_at), default=None)
    return RunSummary(
        frames=report.frames,
        results=len(report.results),
        degraded=sum(r.degraded for r in report.results.values()),
        duplicates=report.duplicates,
        seconds=report.seconds,
        throughput_fps=len(report.results) / report.seconds if report.seconds else 0.0,
        latency_p50_ms=float(np.percentile(lat, 50)) if lat else float("nan"),
        latency_p99_ms=float(np.percentile(lat, 99)) if lat else float("nan"),
        executed=dict(executed),
        synthesized=dict(synthesized),
        agreement={m: float(np.mean(v)) for m, v in per_model.items()},
        accuracy=_mean(frame_acc.values()),
        compute_saved=1 - _mean(frame_cost.values()) / total_per_frame,
        steady_accuracy=_mean(frame_acc[f] for f in steady),
        steady_compute_saved=1 - _mean(frame_cost[f] for f in steady) / total_per_frame,
        link_versions=sorted(
            {r.link_version for res in report.results.values() for r in res.results} - {None}
        ),
        final_active=sorted(r.model for r in last.results if r.status == "executed")
        if last
        else [],
    )


def _mean(values: Any) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _link_costs(config: PipelineConfig) -> dict[tuple[str, str], float]:
    store = LinkStore(config.links.store)
    version = store.current()
    if version is None:
        return {}
    meta = next(v.meta for v in store.versions() if v.version == version)
    return {(c["source"], c["target"]): c.get("ms", 0.0) for c in meta.get("link_costs", [])}
