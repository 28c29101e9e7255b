"""MLink's stream operators as a library: attach them to your own faust app.

::

    import faust
    from mlink.operators import MLink, Model, Settings, attach, backlog_settings
    from mlink.topics.specs import VectorSpec

    settings = Settings(name="cams", budget={"fraction": 0.5})
    app = faust.App(
        "cams", broker="kafka://localhost:9092", broker_session_timeout=10,
        web_enabled=False, store="memory://", **backlog_settings(settings),
    )
    models = [
        Model(name="faces", fn=count_faces, spec=VectorSpec(1, "count", max_count=20)),
        Model(name="persons", fn=person_net, spec=VectorSpec(1, "count", max_count=50)),
    ]
    attach(app, MLink(settings, models))

Create the topics before the first worker starts (``control`` and ``samples`` with one
partition; ``mlink.deploy.kafka_admin.ensure_topics``) and run workers with
``faust -A app worker --without-web``; the README's "MLink inside your own faust app" is a
complete app, run against a real broker by the tests.

Each operator can also be attached on its own: the frame operator (planner, model operators and
link operator fused in one agent), or the split planner / model operator / link operator, the
trainer, the controller and the control replay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlink.operators.app import create_app
    from mlink.operators.attach import (
        Attached,
        attach,
        attach_metrics,
        backlog_settings,
    )
    from mlink.operators.control_operators import attach_control_replay
    from mlink.operators.controller_agent import attach_controller
    from mlink.operators.fetch_wait import cap_fetch_wait
    from mlink.operators.frame_operator import (
        FrameReader,
        attach_frame_operator,
        read_frame_record,
        source_reader,
    )
    from mlink.operators.model_builder import attach_model_builder
    from mlink.operators.runtime import MLink
    from mlink.operators.settings import LinkSettings, Model, Settings, SettingsError
    from mlink.operators.split_operators import (
        attach_link_operator,
        attach_model_operator,
        attach_planner,
    )
    from mlink.operators.trainer_operator import attach_trainer

#: Where each name lives: imported when first used, so a child process that imports one
#: submodule (an isolated model's, mlink.operators.model_process) does not import faust and
#: every operator first (9 s per restart on a loaded machine: a new user's audit, stop 45).
_WHERE = {
    "Attached": "mlink.operators.attach",
    "FrameReader": "mlink.operators.frame_operator",
    "LinkSettings": "mlink.operators.settings",
    "MLink": "mlink.operators.runtime",
    "Model": "mlink.operators.settings",
    "Settings": "mlink.operators.settings",
    "SettingsError": "mlink.operators.settings",
    "attach": "mlink.operators.attach",
    "attach_control_replay": "mlink.operators.control_operators",
    "attach_controller": "mlink.operators.controller_agent",
    "attach_frame_operator": "mlink.operators.frame_operator",
    "attach_link_operator": "mlink.operators.split_operators",
    "attach_metrics": "mlink.operators.attach",
    "attach_model_builder": "mlink.operators.model_builder",
    "attach_model_operator": "mlink.operators.split_operators",
    "attach_planner": "mlink.operators.split_operators",
    "attach_trainer": "mlink.operators.trainer_operator",
    "backlog_settings": "mlink.operators.attach",
    "cap_fetch_wait": "mlink.operators.fetch_wait",
    "create_app": "mlink.operators.app",
    "read_frame_record": "mlink.operators.frame_operator",
    "source_reader": "mlink.operators.frame_operator",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "Attached",
    "FrameReader",
    "LinkSettings",
    "MLink",
    "Model",
    "Settings",
    "SettingsError",
    "attach",
    "attach_control_replay",
    "attach_controller",
    "attach_frame_operator",
    "attach_link_operator",
    "attach_metrics",
    "attach_model_builder",
    "attach_model_operator",
    "attach_planner",
    "attach_trainer",
    "backlog_settings",
    "cap_fetch_wait",
    "create_app",
    "read_frame_record",
    "source_reader",
]
