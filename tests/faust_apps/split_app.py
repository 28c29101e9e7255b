"""A pipeline in the split layout: planner, model operator and link operator as separate agents
joined by the planned and outputs topics (with the trainer, controller and control replay).

    MLINK_CONFIG=... MLINK_BROKER=... python -m faust -A tests.faust_apps.split_app worker

The config is a normal pipeline config; ``MLINK_SPLIT_MODELS`` (comma-separated) limits the
model operator of this app to some models, so two apps can split the models between them.
"""

from __future__ import annotations

import os

import faust

from mlink.deploy.config import load_config
from mlink.operators import (
    MLink,
    attach_control_replay,
    attach_controller,
    attach_link_operator,
    attach_model_builder,
    attach_model_operator,
    attach_planner,
    attach_trainer,
    cap_fetch_wait,
)

config = load_config(os.environ["MLINK_CONFIG"])
mlink = MLink(config.operator_settings(), config.operator_models())
app = faust.App(
    config.name,
    broker=f"kafka://{config.broker}",
    broker_session_timeout=10,
    web_enabled=False,
    store="memory://",
    topic_partitions=config.topics.partitions,
    consumer_auto_offset_reset="earliest",
)
cap_fetch_wait(app)
attach_control_replay(app, mlink)
attach_model_builder(app, mlink)
attach_planner(app, mlink)
only = os.environ.get("MLINK_SPLIT_MODELS")
attach_model_operator(app, mlink, only.split(",") if only else None)
attach_link_operator(app, mlink)
attach_trainer(app, mlink)
attach_controller(app, mlink)
