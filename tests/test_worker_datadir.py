"""A worker's faust data directory stays out of the user's project.

faust's default ``datadir`` is ``<app id>-data`` in the working directory, so every `mlink
worker` left one in the user's project. The app we build puts it in the user's cache directory
(or the temp directory when there is none), faust's own overrides (``F_DATADIR``,
``FAUST_DATADIR``, ``faust --datadir``) still win, and a datadir given to ``create_app`` or set
on the user's own app before :func:`~mlink.operators.attach` is theirs. Pure: apps are built,
never started, so no broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faust
import pytest

from mlink.operators import LinkSettings, MLink, Model, Settings, attach, create_app
from mlink.topics.specs import VectorSpec
from tests.conftest import REPO_ROOT

SPECS = {"digit": VectorSpec(5, "softmax"), "parity": VectorSpec(2, "softmax")}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's project as the working directory, with none of faust's overrides set and the
    user's cache under ``tmp_path``."""
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("F_DATADIR", "FAUST_DATADIR", "APP_DATADIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return work


def _mlink(tmp_path: Path, name: str = "cams") -> MLink:
    settings = Settings(
        name=name,
        budget={"fraction": 1},
        links=LinkSettings(store=str(tmp_path / "links")),
    )
    return MLink(settings, [Model(name=m, fn=len, spec=spec) for m, spec in SPECS.items()])


def _under(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def test_by_default_it_is_in_the_users_cache_not_the_working_directory(
    project: Path, tmp_path: Path
) -> None:
    app = create_app(_mlink(tmp_path), "127.0.0.1:9092")
    assert not _under(app.conf.datadir, project)
    assert app.conf.datadir == tmp_path / "cache" / "mlink" / "faust" / "cams"
    assert app.conf.datadir.is_dir()  # faust creates only its last component
    assert list(project.iterdir()) == []


def test_without_a_usable_cache_it_is_in_the_temp_directory(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container with a read-only or no home: the temp directory, the user's own part of it."""
    (tmp_path / "cache").write_text("a file where the cache directory would be")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    app = create_app(_mlink(tmp_path, "cams2"), "127.0.0.1:9092")
    assert not _under(app.conf.datadir, project)
    assert _under(app.conf.datadir, tmp_path / "tmp") and app.conf.datadir.name == "cams2"
    assert app.conf.datadir.parent.parent.stat().st_mode & 0o077 == 0  # mlink-<uid>: 0700


@pytest.mark.parametrize("variable", ["F_DATADIR", "FAUST_DATADIR"])
def test_fausts_own_override_is_honoured(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """What `mlink run`, the tests and ``faust --datadir`` set."""
    monkeypatch.setenv(variable, str(tmp_path / "mine"))
    app = create_app(_mlink(tmp_path), "127.0.0.1:9092")
    assert app.conf.datadir == tmp_path / "mine"
    assert not (tmp_path / "cache").exists()  # nothing made where it was not wanted


def test_a_datadir_given_to_create_app_is_kept(project: Path, tmp_path: Path) -> None:
    app = create_app(_mlink(tmp_path), "127.0.0.1:9092", datadir=str(tmp_path / "given"))
    assert app.conf.datadir == tmp_path / "given"
    assert not (tmp_path / "cache").exists()


def test_attach_leaves_the_users_own_app_datadir_alone(project: Path, tmp_path: Path) -> None:
    app = faust.App("shop", store="memory://", datadir=str(tmp_path / "shop-data"))
    attach(app, _mlink(tmp_path, "shop"))
    assert app.conf.datadir == tmp_path / "shop-data"


def test_f_datadir_of_a_worker_process_is_honoured(project: Path, tmp_path: Path) -> None:
    """As `mlink run` and the e2e tests start workers: the variable set before faust is imported
    (faust reads it then), in a fresh interpreter."""
    script = (
        "from pathlib import Path\n"
        "from tests.test_worker_datadir import _mlink\n"
        "from mlink.operators import create_app\n"
        f"app = create_app(_mlink(Path({str(tmp_path)!r})), '127.0.0.1:9092')\n"
        "print(app.conf.datadir)\n"
    )
    env = {**os.environ, "F_DATADIR": str(tmp_path / "worker-data")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "worker-data")
    assert list(project.iterdir()) == []
