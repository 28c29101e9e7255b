"""MLink's stream operators as a library: attach them to your own faust app.

::

    import faust
    from mlink.operators import MLink, Model, Settings, attach
    from mlink.topics.specs import VectorSpec

    app = faust.App("cameras", broker="kafka://localhost:9092")
    models = [
        Model(name="faces", fn=count_faces, spec=VectorSpec(1, "count", max_count=20)),
        Model(name="persons", fn=person_net, spec=VectorSpec(1, "count", max_count=50)),
    ]
    attach(app, MLink(Settings(name="cams", budget={"fraction": 0.5}), models))

Each operator can also be attached on its own: the frame operator (planner, model operators and
link operator fused in one agent), or the split planner / model operator / link operator, the
trainer, the controller and the control replay.
"""

from mlink.operators.app import create_app
from mlink.operators.attach import Attached, attach, attach_metrics, attach_model_builder
from mlink.operators.control_operators import attach_control_replay
from mlink.operators.controller_agent import attach_controller
from mlink.operators.fetch_wait import cap_fetch_wait
from mlink.operators.frame_operator import (
    FrameReader,
    attach_frame_operator,
    read_frame_record,
    source_reader,
)
from mlink.operators.runtime import MLink
from mlink.operators.settings import LinkSettings, Model, Settings, SettingsError
from mlink.operators.split_operators import (
    attach_link_operator,
    attach_model_operator,
    attach_planner,
)
from mlink.operators.trainer_operator import attach_trainer

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
    "cap_fetch_wait",
    "create_app",
    "read_frame_record",
    "source_reader",
]
