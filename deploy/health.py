"""A worker's health file, the readers ``mlink run`` polls, and optional JSON logs.

Each worker keeps one small JSON file up to date (written atomically: temp file, fsync,
``os.replace``, so a reader never sees half of it)::

    {"worker": "worker-0", "pid": 4242, "ready": true, "started_at": 1764470000.1,
     "last_heartbeat": 1764470012.6, "metrics_port": 38123, "epoch": 3, "extra": {}}

``ready`` turns true when the worker has joined its group and replayed the control topic;
``last_heartbeat`` moves on every :meth:`HealthFile.beat` (a timer in the worker), so a reader
can tell a live worker from a stale file. :func:`wait_ready` replaces grepping the log for
faust's "Ready" line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "Health",
    "HealthFile",
    "agent_crashes_in",
    "json_logging_config",
    "read_health",
    "use_json_logs",
    "wait_ready",
]


@dataclass(frozen=True, slots=True)
class Health:
    """One snapshot of a worker's health file."""

    worker: str
    pid: int
    ready: bool
    started_at: float
    last_heartbeat: float
    metrics_port: int | None = None
    epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def age(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self.last_heartbeat


class HealthFile:
    """The health file of the current process; every update rewrites it atomically."""

    def __init__(self, path: str | os.PathLike[str], worker: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.state = Health(worker, os.getpid(), False, now, now)
        self._write()

    def update(self, **changes: Any) -> Health:
        """Change fields (``ready``, ``metrics_port``, ``epoch``, ``extra``) and heartbeat."""
        self.state = replace(self.state, last_heartbeat=time.time(), **changes)
        self._write()
        return self.state

    def beat(self) -> Health:
        return self.update()

    def _write(self) -> None:
        data = json.dumps(asdict(self.state), sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def read_health(path: str | os.PathLike[str]) -> Health | None:
    """The file's snapshot, or None while it does not exist yet."""
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"health file {path} is not valid JSON ({exc})") from None
    known = {k: data[k] for k in Health.__dataclass_fields__ if k in data}
    return Health(**known)


def agent_crashes_in(paths: Iterable[str | os.PathLike[str]]) -> dict[str, int]:
    """Agent crashes summed over the health files at ``paths`` (every worker of a run,
    restarted ones each with their own file): ``{agent: crashes}``, the agents that crashed
    only. A file that is missing or unreadable counts nothing."""
    total: dict[str, int] = {}
    for path in paths:
        try:
            health = read_health(path)
        except (OSError, ValueError, TypeError):
            continue
        counts = health.extra.get("agent_crashes") if health is not None else None
        if not isinstance(counts, Mapping):
            continue
        for agent, n in counts.items():
            if isinstance(n, int) and n > 0:
                total[str(agent)] = total.get(str(agent), 0) + n
    return total


def wait_ready(
    path: str | os.PathLike[str],
    timeout: float,
    *,
    pid: int | None = None,
    alive: Callable[[], str | None] | None = None,
    poll_s: float = 0.05,
) -> Health:
    """Block until the health file says ready (written by ``pid``, when given); return it.

    ``alive`` is called while waiting and may return why the worker is gone (e.g. "exited
    with 1"), which stops the wait with RuntimeError; a timeout raises TimeoutError naming the
    last state seen. A file left by an earlier process is ignored when ``pid`` is given.
    """
    deadline = time.monotonic() + timeout
    last: Health | None = None
    while True:
        with contextlib.suppress(ValueError):  # a hand-edited file: keep polling
            last = read_health(path)
        if last is not None and last.ready and (pid is None or last.pid == pid):
            return last
        if alive is not None and (why := alive()) is not None:
            raise RuntimeError(f"worker gone before it was ready ({why}); health file {path}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"worker not ready after {timeout}s; health file {path}: {last}")
        time.sleep(poll_s)


# -- JSON logs --------------------------------------------------------------------------------

_JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def _formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(_JSON_FORMAT, rename_fields={"levelname": "level", "name": "logger"})


def json_logging_config(level: str = "INFO") -> Mapping[str, Any]:
    """A ``logging.config.dictConfig`` mapping for one-JSON-object-per-line logs on stderr;
    also faust's ``logging_config`` setting, so the worker's own lines are JSON too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": _JSON_FORMAT,
                "rename_fields": {"levelname": "level", "name": "logger"},
            }
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "level": level}
        },
        "root": {"handlers": ["stderr"], "level": level},
    }


def use_json_logs(logger: logging.Logger | None = None) -> None:
    """Switch every handler of ``logger`` (default: the root logger) to JSON lines; for a
    process whose logging is already set up (e.g. by faust's worker)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(_formatter())
