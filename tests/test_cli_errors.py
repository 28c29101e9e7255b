"""What a user can fix in a config or on the command line ends `mlink` with the reason and exit
code 2, not a traceback (no broker needed: each fails before anything starts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.test_pipeline_e2e import FAST_MODELS, write_config


def _config(tmp_path: Path, **source) -> Path:
    path, _ = write_config(
        tmp_path, "cli", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    data = yaml.safe_load(path.read_text())
    data["source"] = source
    path.write_text(yaml.safe_dump(data))
    return path


def _mlink(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`mlink ARGV` from ``cwd``, with the repository importable (configs name model factories
    in tests/)."""
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "mlink.deploy.cli", *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    """What a refused command said, on one line, once it exited 2 without a traceback."""
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, said
    assert "Traceback" not in said
    return said


@pytest.mark.parametrize(
    ("source", "argv", "says"),
    [
        ({"images": "nowhere/*.png"}, [], "matches no files"),
        ({"videos": ["missing.mp4"]}, [], "missing.mp4"),
        ({"topic": "cameras"}, [], "nothing for `mlink run` to send"),
        ({"images": "nowhere/*.png"}, ["--broker", "ssl://a:9093"], "security"),
        ({"images": "nowhere/*.png"}, ["--broker", "a:port"], "1..65535"),
    ],
)
def test_mlink_run_names_what_to_fix_instead_of_a_traceback(
    tmp_path: Path, source: dict, argv: list[str], says: str
) -> None:
    assert says in _refused(_mlink("run", str(_config(tmp_path, **source)), *argv, cwd=tmp_path))


def _model_config(tmp_path: Path, bad: dict) -> Path:
    """Two tiny models of tests/misbehaving_models.py, the second as ``bad`` says."""
    parity = {"kind": "vector", "size": 2, "task": "softmax"}
    model = "tests.misbehaving_models:misbehaving"
    data = {
        "name": "cli-models",
        "source": {"factory": "mlink.eval.workloads.digits:frames", "args": {"limit": 3}},
        "models": [
            {"name": "good", "factory": model, "output": parity},
            {"name": "bad", "factory": model, "output": parity, **bad},
        ],
        "budget": {"fraction": 0.5},
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"args": {"fault": "raise"}}, "model 'bad' raised RuntimeError: cannot handle frame"),
        ({"args": {"fault": "garbage"}}, "model 'bad' gave an invalid output on frame 0"),
        ({"args": {"faul": "raise"}}, "models[bad]: factory"),
    ],
)
@pytest.mark.parametrize("command", [["bench", "--config-budget"], ["run"]])
def test_a_model_that_fails_the_reference_run_is_named_without_a_traceback(
    tmp_path: Path, bad: dict, says: str, command: list[str]
) -> None:
    """`mlink bench` and `mlink run`'s comparison run every model on every frame first: a model
    that raises, answers garbage or is given args it does not take ends them with its name and
    exit code 2, before any broker starts."""
    path = _model_config(tmp_path, bad)
    assert says in _refused(_mlink(command[0], str(path), *command[1:], cwd=tmp_path))


def test_a_source_too_short_to_train_links_on_names_the_knobs(tmp_path: Path) -> None:
    """Two good models on 30 frames: the bench's training share holds too few frames for a
    link, which is said with the options that fix it, not as a traceback about folds."""
    path = _model_config(tmp_path, {})
    data = yaml.safe_load(path.read_text())
    data["source"]["args"]["limit"] = 30
    path.write_text(yaml.safe_dump(data))
    said = _refused(_mlink("bench", str(path), "--config-budget", cwd=tmp_path, timeout=300))
    assert "too few training frames" in said and "--train-fraction" in said


def test_a_cancelled_metadata_refresh_on_close_is_not_reported_as_an_error() -> None:
    import logging

    from mlink.deploy.cli import _not_a_cancelled_refresh

    def record(exc: object) -> logging.LogRecord:
        return logging.LogRecord(
            "kafka.cluster", logging.ERROR, __file__, 1, "Metadata refresh: failed %s", (exc,), None
        )

    assert not _not_a_cancelled_refresh(record("Cancelled"))
    assert _not_a_cancelled_refresh(record("NodeNotReadyError"))  # a real failure still shows
