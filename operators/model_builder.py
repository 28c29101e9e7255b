"""Building a worker's models before its consumer joins the group.

faust starts an app's own tasks once its consumer is up, so a model build started there ran
after the worker had joined: a restarted worker took partitions from the running ones and its
cameras waited through the build (45-57 s in a helper's rollout audit, stop 45). A mode service
added to the app before it starts is its first child, and faust starts children in order and
one at a time, so the producer, the consumer and the agents wait for it.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from mode import Service

from mlink.operators.runtime import MLink

__all__ = ["ModelBuilder", "attach_model_builder"]

log = logging.getLogger("mlink.worker")


class ModelBuilder(Service):
    """Builds every model of ``mlink`` when the app starts, before anything else of the app."""

    def __init__(self, mlink: MLink, **kwargs: Any) -> None:
        self.mlink = mlink
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        todo = [m for m in self.mlink.model_names if m not in self.mlink.runners]
        if not todo:
            return
        log.info("building %d models (%s) before joining the group", len(todo), ", ".join(todo))
        try:
            stopped = (await self.wait_first(self.mlink.build_models())).stopped
        except Exception as exc:  # the app's crash reason: the worker's last log line names it
            await self.crash(exc)
            raise
        if stopped:
            building = [m for m in todo if m not in self.mlink.runners]
            log.warning(
                "stopped while building models (%s still building): not waiting for them",
                ", ".join(building) or "none",
            )


def attach_model_builder(app: faust.App, mlink: MLink) -> None:
    """Build every model before the worker joins its consumer group (call before the app
    starts). A model that cannot be built stops the worker, naming the model."""
    app.add_dependency(ModelBuilder(mlink))
