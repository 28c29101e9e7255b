"""Which models a worker runs, as `mlink status` tells it from the consumer group, and the
plans a config refuses: a rolling restart onto other models was invisible there (`mlink status
new.yaml` said "epoch 0, all (warming up)" while the old workers' plan ran). No broker."""

from __future__ import annotations

from rich.console import Console

from mlink.deploy.group_members import model_sets
from mlink.deploy.pipeline_status import newer_refused
from mlink.deploy.status_view import render_status
from mlink.operators.relearn import CLIENT_ID_PREFIX, model_set_id
from mlink.topics.specs import VectorSpec


def test_the_model_set_id_follows_models_and_outputs_not_their_order() -> None:
    a, b = VectorSpec(size=2, task="softmax"), VectorSpec(size=1, task="linear")
    same = model_set_id({"x": a, "y": b})
    assert model_set_id({"y": b, "x": a}) == same and len(same) == 8
    assert model_set_id({"x": a}) != same  # a model fewer
    assert model_set_id({"x": a, "y": VectorSpec(size=3, task="linear")}) != same  # re-specced


def test_members_are_counted_per_model_set_from_client_or_member_ids() -> None:
    ids = [
        f"{CLIENT_ID_PREFIX}12c3862c",  # Kafka: the client id
        f"{CLIENT_ID_PREFIX}12c3862c-268ed797-ae68-4d24-8d86-66d8b306459c",  # Tansu: member id
        f"{CLIENT_ID_PREFIX}9b9330c4-0a66b22b",
        "faust-0.11.3-5f1e",  # an older worker, or an app with its own client id
    ]
    assert model_sets(ids) == {"12c3862c": 2, "9b9330c4": 1, "unknown": 1}


def test_only_plans_newer_than_the_one_in_force_are_reported_refused() -> None:
    history = [(1, "names models this pipeline does not have"), (3, "content table: x")]
    assert newer_refused(history, epoch=4) is None  # history: relearned since
    assert newer_refused(history, epoch=2) == {"epoch": 3, "count": 1, "reason": "content table: x"}
    assert newer_refused(history, epoch=0)["count"] == 2


def test_status_says_when_workers_on_another_config_share_the_group() -> None:
    report = {
        "epoch": 0,
        "models": ["a"],
        "active": "all (warming up)",
        "workers": {
            "group": "g",
            "state": "Stable",
            "workers": 2,
            "model_sets": {"aaaa1111": 1, "bbbb2222": 1},
        },
        "model_set": "aaaa1111",
        "refused_plans": {"epoch": 2, "count": 2, "reason": "content table names models"},
    }
    console = Console(width=200, record=True)
    render_status(report, console)
    text = console.export_text()
    assert "1 on this config's models (aaaa1111), 1 on bbbb2222" in text
    assert "this config refuses the pipeline's newest plan (epoch 2;" in text
    assert "warming up" not in text and "runs (plans refused)" in text  # it is not a warm-up
    report["workers"]["model_sets"] = {"aaaa1111": 2}
    report["refused_plans"] = None
    console = Console(width=200, record=True)
    render_status(report, console)
    text = console.export_text()
    assert "another config" not in text and "refuses" not in text


def test_status_says_when_the_plan_in_force_is_from_links_for_other_models(tmp_path) -> None:
    """The other side of a rolling restart, a model added: the new workers accept the old
    plan but cannot use its links, and run every model; status showed the old plan's
    synthesized models and estimate as if they ran (the re-audit)."""
    import torch

    from mlink.deploy.pipeline_status import store_report, trained_for_other_models
    from mlink.linkstore.store import LinkStore
    from mlink.operators.state import ControlState

    a, b = VectorSpec(size=2, task="softmax"), VectorSpec(size=1, task="linear")
    store = LinkStore(tmp_path / "links")
    version = store.save({"x": {"w": torch.zeros(1)}}, {"models": {"a": a.to_dict()}})
    metas = store.versions()
    assert trained_for_other_models(metas, version, {"a": a}) is None
    added = "this config has b, which the links do not cover"
    assert trained_for_other_models(metas, version, {"a": a, "b": b}) == added
    assert trained_for_other_models(metas, version + 1, {"a": a, "b": b}) is None  # gone

    state = ControlState(("a", "b"))
    state.link_version = version
    report = store_report(str(store.root), state, {"a": a, "b": b})
    assert report["in_force_for_other_models"] == added
    status = {
        "epoch": 3,
        "models": ["a", "b"],
        "active": ["a"],
        "link_version": version,
        "linkstore": report,
    }
    console = Console(width=200, record=True)
    render_status(status, console)
    text = console.export_text()
    assert f"link version {version} was trained for other models ({added})" in text
    assert "synthesized by links" not in text and "runs (links for other models)" in text
