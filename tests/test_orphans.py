"""Nothing an mlink command starts outlives it: a killed ``mlink run`` leaves no worker and no
broker behind, however it was killed (real embedded broker, real faust worker).

Found by hand: a SIGTERMed ``mlink run`` ended at once (Python's default), its broker died with
it, and its worker's graceful shutdown, asked for by the worker's death signal, spun on the dead
broker at 90% of a core until killed by hand."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.procs import alive, children, command_line, wait_until
from tests.test_pipeline_e2e import FAST_MODELS, write_config

REPO_ROOT = Path(__file__).resolve().parent.parent

# A parent that starts a child which ignores SIGTERM (a graceful shutdown that never ends) and
# arms the orphan watchdog; the parent prints the child's pid and waits to be killed.
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1] % os.getpid()])
    print(child.pid, flush=True)
    time.sleep(600)
    """
)
CHILD = textwrap.dedent(
    """
    import signal, time
    from mlink.operators.orphans import exit_when_orphaned
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_when_orphaned(%d, 0.5)
    time.sleep(600)
    """
)


def test_an_orphan_ends_itself_after_its_grace_even_if_it_ignores_sigterm():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())  # type: ignore[union-attr]
    try:
        assert not wait_until(lambda: not alive(child), timeout=1.5)  # its parent lives
        parent.kill()
        parent.wait(timeout=10)
        assert wait_until(lambda: not alive(child), timeout=30)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def _planning(run_dir: Path) -> bool:
    """A worker of the run has consumed frames and planned under a link version: it has offsets
    to commit when it shuts down (a worker killed right after Ready has none, and its shutdown
    never needed the broker)."""
    for path in run_dir.glob(".mlink-runs/*/*.health.json"):
        with contextlib.suppress(OSError, ValueError):
            if (json.loads(path.read_text()).get("epoch") or 0) >= 1:
                return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_mlink_run_leaves_no_worker_or_broker(tmp_path: Path, sig: signal.Signals):
    path, _ = write_config(
        tmp_path, "orphan", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    argv = ["run", str(path), "--rate", "2", "--no-compare", "--timeout", "600", "--json"]
    run = subprocess.Popen(
        [sys.executable, "-m", "mlink.deploy.cli", *argv],
        cwd=tmp_path,
        env={**os.environ, "F_DATADIR": str(tmp_path / "faust")},
        stdout=subprocess.PIPE,  # one JSON line at most
        stderr=subprocess.DEVNULL,
    )
    started: list[int] = []
    try:
        assert wait_until(lambda: _planning(tmp_path), timeout=240), "no worker is planning"
        started = children(run.pid)
        names = [command_line(p) for p in started]
        assert any("tansu" in n for n in names) and any("faust" in n for n in names), names
        run.send_signal(sig)
        out, _ = run.communicate(timeout=120)
        if sig == signal.SIGTERM:  # `timeout mlink run --json` still says what the run did
            summary = json.loads(out)
            assert run.returncode == 128 + signal.SIGTERM and summary["interrupted"] == 143
            assert 0 < summary["results"] <= summary["frames"] < 40, summary
            assert summary["agent_crashes"] == {}  # the workers' heartbeats count them
            files = tmp_path.glob(".mlink-runs/*/*.health.json")
            beats = [json.loads(p.read_text()) for p in files]
            assert beats and all(b["extra"]["agent_crashes"] == {} for b in beats), beats
            # a worker asked to stop says it is not ready any more
            assert all(not b["ready"] and b["extra"].get("stopping") for b in beats), beats
        # a SIGTERMed run stops them itself; after a SIGKILL the broker dies with it and the
        # worker ends itself once its shutdown has had ORPHAN_GRACE_S (20 s)
        left = lambda: [p for p in started if alive(p)]  # noqa: E731
        assert wait_until(lambda: not left(), timeout=90), [command_line(p) for p in left()]
    finally:
        if run.poll() is None:
            run.kill()
        for p in started:
            if alive(p):
                os.kill(p, signal.SIGKILL)
