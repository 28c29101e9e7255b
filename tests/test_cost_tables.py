"""The bench's cost table from a file: a live run's summary prices the bench on its costs."""

from __future__ import annotations

import json

import pytest

from mlink.eval.cost_tables import read_cost_table


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
