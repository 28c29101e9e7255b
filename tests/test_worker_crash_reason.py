"""A worker that cannot start ends with the reason as its log's last line: after a model that
did not import, the last lines were an unrelated "Event loop is closed" traceback, the cause
140-300 lines above (a new user's audit, stop 45). Real broker and worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlink.deploy.topics_setup import create_pipeline_topics
from tests.conftest import FaustWorker
from tests.test_pipeline_e2e import APP, FAST_MODELS, worker_env, write_config

UNIMPORTABLE = {
    "name": "typo",
    "factory": "tests.no_such_module:model",
    "output": {"kind": "vector", "size": 2, "task": "softmax"},
    "cost": {"ms": 5.0},
}


def test_a_model_that_does_not_import_is_the_last_word(broker: Any, tmp_path: Path) -> None:
    path, config = write_config(
        tmp_path,
        "typo",
        FAST_MODELS,
        partitions=1,
        warmup_frames=8,
        output_timeout_s=5.0,
        extra_models=[UNIMPORTABLE],
    )
    create_pipeline_topics(config, broker.bootstrap)
    worker = FaustWorker(
        APP, worker_env(path, broker.bootstrap, tmp_path / "f"), tmp_path / "w.log", "w"
    )
    try:
        assert worker.proc.wait(timeout=180) != 0  # it ends itself
        last = [line for line in worker.log().splitlines() if line.strip()][-1]
        assert "worker stopped:" in last and "'typo' could not be built" in last, worker.log_tail()
        assert "tests.no_such_module" in last
    finally:
        worker.stop()
