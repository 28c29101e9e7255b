"""The bench's cost table from a file: a live run's summary prices the bench on its costs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mlink.eval.cost_tables import cost_table_json, jittered, read_cost_table, with_cost_table
from mlink.eval.workload import Workload
from mlink.topics.specs import VectorSpec


def test_reads_a_run_summary_and_a_plain_mapping(tmp_path):
    summary = tmp_path / "run.json"
    summary.write_text(json.dumps({"frames": 3, "model_ms": {"a": 1.5, "b": 2, "c": 9.0}}))
    assert read_cost_table(summary, ["a", "b"]) == {"a": 1.5, "b": 2.0}
    plain = tmp_path / "costs.json"
    plain.write_text(json.dumps({"a": 0.25, "b": 4}))
    assert read_cost_table(plain, ["a", "b"]) == {"a": 0.25, "b": 4.0}


def test_names_what_is_missing_or_unreadable(tmp_path):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"model_ms": {"a": 1.0, "b": "fast"}}))
    with pytest.raises(ValueError, match=r"no ms for \['b', 'c'\]"):
        read_cost_table(partial, ["a", "b", "c"])
    broken = tmp_path / "broken.json"
    broken.write_text("full run of 7 models\n{}")
    with pytest.raises(ValueError, match="readable JSON cost table"):
        read_cost_table(broken, ["a"])
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        read_cost_table(listed, ["a"])


def test_a_committed_table_reads_back_and_says_where_it_came_from(tmp_path):
    spec = VectorSpec(1, "linear")
    workload = Workload(
        "w",
        {"a": spec, "b": spec},
        {"a": [np.zeros(1)], "b": [np.zeros(1)]},
        {"a": {"ms": 12.34567, "memory_mb": 5.0}, "b": {"ms": 2.0}},
        cost_source="measured on a quiet machine",
    )
    table = tmp_path / "w.json"
    table.write_text(cost_table_json(workload))
    assert read_cost_table(table, ["a", "b"]) == {"a": 12.346, "b": 2.0}
    priced = with_cost_table(
        replace(workload, costs={"a": {"ms": 1.0}, "b": {"ms": 1.0}}), None, str(table)
    )  # type: ignore[arg-type]
    assert priced.costs["a"] == {"ms": 12.346}
    assert priced.cost_source == f"read from {table} (measured on a quiet machine)"


def test_a_jittered_table_moves_each_model_by_its_own_seeded_factor():
    spec = VectorSpec(1, "linear")
    workload = Workload(
        "w",
        {"a": spec, "b": spec},
        {"a": [np.zeros(1)], "b": [np.zeros(1)]},
        {"a": {"ms": 10.0, "memory_mb": 5.0}, "b": {"ms": 20.0}},
        cost_source="declared",
    )
    one, again, other = (jittered(workload, 0.1, seed) for seed in (3, 3, 4))
    assert one.costs == again.costs and one.costs != other.costs  # a draw per seed, repeatable
    assert one.costs["a"]["memory_mb"] == 5.0  # only ms moves
    ratios = [one.costs[m]["ms"] / workload.costs[m]["ms"] for m in ("a", "b")]
    assert ratios[0] != pytest.approx(ratios[1]) and all(0.5 < r < 2.0 for r in ratios)
    assert "exp(N(0, 0.1)), seed 3" in one.cost_source
    assert jittered(workload, 0.0, 1).costs == workload.costs
    with pytest.raises(ValueError, match="cost noise"):
        jittered(workload, -0.1, 0)
