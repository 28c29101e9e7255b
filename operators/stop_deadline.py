"""A worker that was asked to stop ends within a deadline, even with its broker gone.

faust stops its consumer before anything else, and with the broker unreachable that stop waits
out mode's 60 s service timeout (measured: 65 s from SIGTERM to exit; 2 s with the broker up).
An orchestrator's grace period is usually shorter (Kubernetes: 30 s), so the worker would be
killed without a word. With a deadline the worker says why and exits itself; frames it had not
answered are delivered again to whichever worker takes their partitions, and deduplicated by
frame id, as after any crash.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["STOP_DEADLINE_EXIT", "end_stuck_stop", "say_why_it_crashed", "when_stop_starts"]

log = logging.getLogger(__name__)

# the exit code of a worker whose stop outlived its deadline (1: faust's own on an error exit)
STOP_DEADLINE_EXIT = 1


def end_stuck_stop(app: Any, deadline_s: float) -> None:
    """Exit the process ``deadline_s`` seconds after ``app`` (a faust app) starts to stop.

    For processes that run one app and nothing else (``mlink worker``, ``create_app(...,
    stop_deadline_s=...)``): the exit is ``os._exit``, which skips whatever else the process
    would have done on the way out.
    """
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    when_stop_starts(app, lambda: _arm(deadline_s, app))


def when_stop_starts(app: Any, callback: Callable[[], object]) -> None:
    """Call ``callback`` as soon as ``app`` (a faust app) starts to stop, before faust stops its
    consumer (which can wait a minute on a broker that is gone); faust's own
    ``on_before_shutdown`` comes after that."""
    stop_app = app.on_stop

    async def on_stop() -> None:
        callback()
        await stop_app()

    app.on_stop = on_stop


def say_why_it_crashed(app: Any) -> None:
    """The crash's reason, if ``app`` crashed, as the log's last line: faust logs it once, then
    a hundred lines of shutdown and, after a model that did not import, an unrelated "Event loop
    is closed" traceback last (a new user's audit, stop 45)."""
    reason = getattr(app, "crash_reason", None)
    if reason is not None:
        logging.getLogger("mlink.worker").critical(
            "worker stopped: %s: %s", type(reason).__name__, reason
        )


def _from_kafka(reason: BaseException) -> bool:
    """A Kafka client's error (aiokafka's or kafka-python's): the broker, not the worker."""
    return type(reason).__module__.split(".")[0] in ("aiokafka", "kafka")


def _arm(deadline_s: float, app: Any) -> None:
    def expire() -> None:
        reason = getattr(app, "crash_reason", None)
        if reason is not None and not _from_kafka(reason):  # not the broker: say what it was
            log.error("still stopping %.0f s after the worker crashed: exiting now", deadline_s)
            say_why_it_crashed(app)
        elif reason is not None:  # the broker went away and the worker crashed on it
            log.error(
                "still stopping %.0f s after the worker crashed on a broker that does not "
                "answer: exiting now; frames this worker had not answered are delivered again "
                "and deduplicated",
                deadline_s,
            )
            say_why_it_crashed(app)
        else:
            log.error(
                "still stopping %.0f s after being asked to (faust's stop waits up to a minute "
                "on a broker that does not answer): exiting now; frames this worker had not "
                "answered are delivered again and deduplicated. Raise runtime.stop_timeout_s if "
                "your models need longer to finish a batch",
                deadline_s,
            )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(STOP_DEADLINE_EXIT)

    timer = threading.Timer(deadline_s, expire)
    timer.name, timer.daemon = "mlink-stop-deadline", True
    timer.start()
