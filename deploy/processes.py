"""Worker processes: a faust worker in a subprocess, with its log in a file.

Each process runs in its own process group with a death signal (SIGTERM, for a graceful
shutdown), and a pipeline worker ends itself :data:`ORPHAN_GRACE_S` after its parent is gone,
so it cannot outlive its parent even when that shutdown hangs; a pipeline worker reports
readiness in a health file (:mod:`mlink.deploy.health`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from mlink.operators.orphans import pdeathsig_preexec, signal_group

__all__ = [
    "ORPHAN_GRACE_S",
    "PARENT_ENV",
    "READY_LINE",
    "WORKER_APP",
    "FaustProcess",
    "WorkerProcess",
    "worker_argv",
]

READY_LINE = "[^Worker]: Ready"
#: the environment variable that tells a worker its parent's pid (see ``worker_app``)
PARENT_ENV = "MLINK_PARENT_PID"
#: how long a worker whose parent died may take to shut down before it ends itself; as long as
#: :meth:`FaustProcess.stop` waits before SIGKILL
ORPHAN_GRACE_S = 20.0


WORKER_APP = "mlink.deploy.worker_app"


def worker_argv(app: str = WORKER_APP) -> list[str]:
    """The command line of one faust worker (the pipeline's, named by ``MLINK_CONFIG``)."""
    return [sys.executable, "-m", "faust", "-A", app, "worker", "--without-web", "-l", "info"]


class FaustProcess:
    """A faust worker subprocess with its log in a file, in its own process group (and with a
    death signal, so it cannot outlive its parent)."""

    def __init__(
        self,
        app: str,
        env: Mapping[str, str],
        log_path: Path,
        name: str,
        cwd: Path | None = None,
    ) -> None:
        self.app, self.name, self.log_path = app, name, log_path
        self.ready_seconds: float | None = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                worker_argv(app),
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()), **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(signal.SIGTERM),
            )
        self.started = time.monotonic()

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Block until the worker logs Ready; return the seconds since it was spawned."""
        while READY_LINE not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited with {self.proc.returncode} before it was "
                    f"ready; its log {self.log_path} ends with:\n{self.log_tail(30)}"
                )
            if time.monotonic() - self.started > timeout:
                raise TimeoutError(
                    f"worker {self.name} not ready after {timeout}s; log {self.log_path}:\n"
                    f"{self.log_tail(30)}"
                )
            time.sleep(0.05)
        if self.ready_seconds is None:
            self.ready_seconds = time.monotonic() - self.started
        return self.ready_seconds

    def signal(self, sig: signal.Signals) -> None:
        signal_group(self.proc.pid, sig)

    def stop(self, timeout: float = ORPHAN_GRACE_S) -> int:
        """SIGTERM and wait (faust shuts down cleanly in ~1 s); SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        return self.proc.wait()

    def kill(self) -> int:
        """SIGKILL, as a crash would; return the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
        return self.proc.wait()


class WorkerProcess(FaustProcess):
    """One worker of a pipeline: the config path and broker travel in the environment, and the
    worker reports readiness in a health file (:mod:`mlink.deploy.health`)."""

    def __init__(
        self,
        config_path: Path,
        bootstrap: str,
        log_path: Path,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.health_path = log_path.with_suffix(".health.json")
        env = {
            **(env or {}),
            "MLINK_CONFIG": str(config_path.resolve()),
            "MLINK_BROKER": bootstrap,
            "MLINK_HEALTH": str(self.health_path.resolve()),
            "F_DATADIR": str(log_path.parent / "faust-data"),  # not "<app id>-data" in the cwd
        }
        super().__init__(WORKER_APP, env, log_path, name)

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Until the worker says it is ready: control log replayed, every model built."""
        from mlink.deploy.health import wait_ready

        def gone() -> str | None:
            code = self.proc.poll()
            return None if code is None else f"exited with {code}; log:\n{self.log_tail(30)}"

        wait_ready(self.health_path, timeout, pid=self.proc.pid, alive=gone)
        if self.ready_seconds is None:
            self.ready_seconds = time.monotonic() - self.started
        return self.ready_seconds
