"""The command line of the bench scripts that replay the bench's split (``bench/*.py``)."""

from __future__ import annotations

import argparse

from mlink.deploy.config import load_config
from mlink.eval.cost_tables import COSTS_HELP, priced_workload
from mlink.eval.experiment import TrainedWorkload, train_workload
from mlink.linkstore.training import TrainConfig

__all__ = ["replay_parser", "replay_split"]


def replay_parser(doc: str) -> argparse.ArgumentParser:
    """Config, budgets, warm-up share and cost table, described by ``doc``'s first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("config", help="a pipeline config, e.g. deploy/configs/dnn.yaml")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.33, 0.5])
    parser.add_argument("--train", type=float, default=0.1, help="warm-up share of each stream")
    parser.add_argument("--costs", default="cached", help=COSTS_HELP)
    return parser


def replay_split(args: argparse.Namespace) -> TrainedWorkload:
    """The bench's split of ``args.config`` priced on ``args.costs``, the links of seed 0 (the
    bench's first seed; the stream rows do not depend on it)."""
    workload = priced_workload(load_config(args.config), args.costs)
    return train_workload(workload, args.train, TrainConfig(seed=0))
