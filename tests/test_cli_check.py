"""`mlink check CONFIG` tells a user, before any broker or worker, whether their config works: a
table of every model that ran on a few frames, exit 0; or exit 2 with what to fix, no traceback.

Each test runs the real `mlink` as a subprocess on the digits frames (no broker anywhere).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.test_cli_errors import _mlink, _model_config, _refused

DIGITS = REPO_ROOT / "deploy" / "configs" / "digits.yaml"


def _said(done) -> str:
    return " ".join((done.stdout + done.stderr).split())


def test_a_good_config_passes_and_names_every_model(tmp_path: Path) -> None:
    done = _mlink("check", str(DIGITS), cwd=tmp_path)
    said = _said(done)
    assert done.returncode == 0, said
    for model in yaml.safe_load(DIGITS.read_text())["models"]:
        assert model["name"] in said
    assert "on 3 frame(s)" in said and "Traceback" not in said
    assert "budget fraction 0.33" in said and "fits" in said


def test_frames_bounds_how_many_frames_each_model_is_called_on(tmp_path: Path) -> None:
    done = _mlink("check", str(_model_config(tmp_path, {})), "--frames", "2", cwd=tmp_path)
    assert done.returncode == 0, _said(done)
    assert "on 2 frame(s)" in _said(done)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"args": {"fault": "raise"}}, "model 'bad' raised RuntimeError: cannot handle frame"),
        ({"args": {"fault": "garbage"}}, "model 'bad' gave an invalid output on frame 0"),
        ({"args": {"faul": "raise"}}, "models[bad]: factory"),
    ],
)
def test_a_broken_model_is_named_with_its_fault_and_the_others_still_run(
    tmp_path: Path, bad: dict, says: str
) -> None:
    """The reference run's own errors (raised, answered outside its spec, args it does not take),
    with what to do next instead of what the reference run did not cache."""
    said = _refused(_mlink("check", str(_model_config(tmp_path, bad)), cwd=tmp_path))
    assert says in said
    assert "failed" in said and "ok" in said  # `good` ran beside it
    if "faul'" not in str(bad):
        assert "run `mlink check` again once it is fixed" in said and "cached" not in said


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ({"ms": 5, "fraction": 0.5}, "either ms or fraction"),  # the config's own validation
        ({"ms": 1e-6}, "fits no plan"),  # below the cheapest model, whatever links are learnt
    ],
)
def test_a_budget_nothing_can_meet_is_refused(tmp_path: Path, budget: dict, says: str) -> None:
    path = _model_config(tmp_path, {})
    data = yaml.safe_load(path.read_text())
    data["budget"] = budget
    path.write_text(yaml.safe_dump(data))
    assert says in _refused(_mlink("check", str(path), cwd=tmp_path))


def test_a_config_that_does_not_load_is_refused(tmp_path: Path) -> None:
    path = _model_config(tmp_path, {})
    data = yaml.safe_load(path.read_text())
    data["modles"] = data.pop("models")
    path.write_text(yaml.safe_dump(data))
    said = _refused(_mlink("check", str(path), cwd=tmp_path))
    assert "models" in said and "modles" in said


def test_a_model_slower_than_its_timeout_is_refused(tmp_path: Path) -> None:
    """In a worker every call of it would be an error output: said with the key to raise."""
    slow = {"args": {"fault": "hang", "hang_s": 0.05}, "timeout_s": 0.01}
    said = _refused(_mlink("check", str(_model_config(tmp_path, slow)), cwd=tmp_path))
    assert "model 'bad' took" in said and "raise models[bad].timeout_s" in said


def test_a_model_that_never_returns_is_named_and_the_check_ends(tmp_path, monkeypatch) -> None:
    """The case ``timeout_s`` exists for: the check hung for good on it (in-process, with
    short waits, so the test does not sit out the real ones)."""
    from mlink.deploy.config import load_config
    from mlink.eval import config_check

    monkeypatch.setattr(config_check, "WARM_UP_S", 1.0)
    monkeypatch.setattr(config_check, "WARM_UP_TIMEOUTS", 1.0)
    bad = {"args": {"fault": "hang", "hang_s": 5.0}, "timeout_s": 0.5}  # its thread ends later
    report = config_check.check_config(load_config(_model_config(tmp_path, bad)), 2)
    [problem] = report.problems
    assert "model 'bad' did not return within 1 s (timeout_s 0.5)" in problem
    assert [m.name for m in report.models if m.error is None] == ["good"]


def test_a_source_that_raises_is_named_not_a_traceback(tmp_path: Path) -> None:
    path = _model_config(tmp_path, {})
    data = yaml.safe_load(path.read_text())
    data["source"] = {"factory": "tests.misbehaving_models:broken_factory"}
    path.write_text(yaml.safe_dump(data))
    said = _refused(_mlink("check", str(path), cwd=tmp_path))
    assert "source: reading its first frames raised RuntimeError: weights not found" in said


def test_a_link_store_the_workers_cannot_create_is_named_by_check_and_worker(tmp_path) -> None:
    """A read-only mount or a wrong volume path: check passed it, and the worker died at import
    with a long traceback that began with "module 'mlink.deploy' has no attribute"."""
    path = _model_config(tmp_path, {})
    data = yaml.safe_load(path.read_text())
    data["links"] = {"store": "/proc/mlink-links"}
    path.write_text(yaml.safe_dump(data))
    for command in (["check"], ["worker", "--broker", "127.0.0.1:1"]):
        said = _refused(_mlink(command[0], str(path), *command[1:], cwd=tmp_path))
        assert "link store /proc/mlink-links cannot be created" in said, command
        assert "links.store" in said
