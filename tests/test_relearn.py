"""Learning the links again after the store lost them, or for a config whose models changed:
when the controller gives the version in force up, the plan it publishes, and when the trainer
trains above the lost versions."""

from __future__ import annotations

import pytest

from mlink.operators.relearn import (
    RELEARN_KEY,
    LostLinks,
    model_set_change,
    models_change,
    other_models_reason,
    relearn_message,
    relearning,
)
from mlink.operators.state import ControlState
from mlink.topics.records import ControlMessage
from mlink.topics.specs import BoxesSpec, SequenceSpec, VectorSpec, spec_from_dict

MODELS = ("digit", "parity", "value")


def test_a_version_is_lost_only_after_missing_for_the_whole_wait() -> None:
    watch = LostLinks(after_s=60.0)
    assert not watch.counting and not watch.lost(3, False, now=0.0) and watch.counting
    assert not watch.lost(3, None, now=59.0)  # the store could not be asked: no evidence
    assert watch.missing_for(59.0) == 59.0
    assert watch.lost(3, False, now=60.0)
    assert not watch.lost(3, True, now=61.0)  # back (a slow shared store): the count restarts
    assert watch.missing_for(61.0) == 0.0
    assert not watch.lost(3, False, now=62.0) and watch.lost(3, False, now=122.0)
    assert not watch.lost(4, False, now=130.0)  # another version in force: counted afresh
    assert not watch.lost(None, None, now=500.0)  # no links in force: nothing to lose
    with pytest.raises(ValueError, match="after_s must be > 0"):
        LostLinks(0.0)


def test_the_relearn_plan_runs_every_model_and_the_trainer_trains_above_it_once() -> None:
    state = ControlState(MODELS, probe_every=8)
    # the pipeline planned from v3, then the store lost it
    announced = ControlMessage(kind="link_version", epoch=0, issued_at=1.0, link_version=3)
    planned = ControlMessage(
        kind="active_set", epoch=1, issued_at=2.0, active=("digit",), link_version=3
    )
    assert state.apply(announced).status == "applied" and state.apply(planned).plan_changed
    assert not state.warming_up
    why = "link version 3 has been missing or damaged in the link store for 61 s"
    assert state.apply(relearn_message(MODELS, 2, {"fraction": 0.5}, 3, 8, why)).plan_changed
    assert state.warming_up and state.link_version is None
    plan = state.plan(seq=5)
    assert plan.probe and set(plan.active) == set(MODELS)  # every model, every frame
    assert state.plan_extra["replan_reason"] == why and state.plan_extra[RELEARN_KEY] == 3
    assert relearning(state.plan_extra, state.link_version, state.latest_links) == 3
    # v4 announced: relearning is over, and the controller plans from it as from any version
    assert relearning(state.plan_extra, None, 4) is None
    assert relearning(state.plan_extra, 4, 4) is None  # a plan with links in force
    assert relearning({RELEARN_KEY: "3"}, None, 3) is None  # a forged marker trains nothing
    assert relearning({}, None, 3) is None


def _announce(state: ControlState, version: int) -> None:
    message = ControlMessage(kind="link_version", epoch=0, issued_at=1.0, link_version=version)
    assert state.apply(message).status == "applied"


def _plan_from(state: ControlState, epoch: int, version: int) -> None:
    message = ControlMessage(
        kind="active_set", epoch=epoch, issued_at=1.0, active=("digit",), link_version=version
    )
    assert state.apply(message).plan_changed


def test_a_pin_made_while_learning_again_is_planned_from_even_at_the_lost_number() -> None:
    """v3 pinned and in force, v5 the newest: v3 is lost, the relearn names v5 (still whole).
    The operator pins v5: the controller plans from it, and not only until v6 is announced."""
    from mlink.deploy.link_pins import pin_message
    from mlink.operators.controller_rules import relearn_holds as _relearn_holds

    state = ControlState(MODELS)
    for version in (3, 4, 5):
        _announce(state, version)
    state.apply(pin_message(3, True))
    _plan_from(state, 1, 3)
    state.apply(relearn_message(MODELS, 2, {}, 5, 0, "v3 damaged"))
    assert _relearn_holds(state) == 5  # not planning from v5 unasked
    state.apply(pin_message(5, True))
    assert _relearn_holds(state) is None and state.wanted_links == 5
    _announce(state, 6)
    assert _relearn_holds(state) is None and state.wanted_links == 5


def test_a_lost_pin_above_the_newest_announced_version_is_learned_again_above_it() -> None:
    """A pinned v6 the trainer never announced (latest is v5) is lost: the relearn is on, the
    trainer trains once, and its version is numbered above v6, not given v6 again."""
    from mlink.deploy.link_pins import pin_message

    state = ControlState(MODELS)
    for version in range(1, 6):
        _announce(state, version)
    state.apply(pin_message(6, True))
    _plan_from(state, 1, 6)
    state.apply(relearn_message(MODELS, 2, {}, 6, 0, "store gone"))
    assert relearning(state.plan_extra, state.link_version, state.latest_links) == 6
    assert relearning(state.plan_extra, None, None) == 6  # nothing announced yet: still on
    _announce(state, 7)
    assert relearning(state.plan_extra, state.link_version, state.latest_links) is None


def test_a_model_set_change_names_what_was_added_removed_and_respecced() -> None:
    trained = {
        "a": VectorSpec(2, "softmax"),
        "b": BoxesSpec(max_boxes=4),
        "c": VectorSpec(1, "linear"),
        "e": SequenceSpec(vocab_size=12, max_length=5),
    }
    assert model_set_change(trained, dict(trained)) is None
    # every spec kind survives the trip through a link version's metadata unchanged, or every
    # pipeline would learn its links again at every start
    assert (
        model_set_change(
            {m: spec_from_dict(spec.to_dict()) for m, spec in trained.items()}, trained
        )
        is None
    )
    configured = {
        "a": VectorSpec(3, "softmax"),
        "b": trained["b"],
        "d": VectorSpec(1, "linear"),
        "e": trained["e"],
    }
    assert model_set_change(trained, configured) == (
        "this config has d, which the links do not cover; the links cover c, which this config "
        "does not have; this config gives a another output than the links were trained for"
    )
    change = model_set_change(trained, configured)
    reason = other_models_reason(4, change)
    assert reason == f"link version 4 was trained for other models than this config's ({change})"


def test_a_model_set_change_is_said_from_this_configs_side() -> None:
    """A worker left on the old config of a rollout that removed value_gbr was told its links
    were trained for other models "(added ['value_gbr'])": read as the rollout adding it (a
    helper's rollout audit, stop 45)."""
    new, old = ["digit", "ge5"], ["digit", "ge5", "value_gbr"]
    said = models_change(new, old, "the links cover", "the links do not cover")
    assert said == ["this config has value_gbr, which the links do not cover"]
    said = models_change(old, new, "the plan names", "the plan does not name")
    assert said == ["the plan names value_gbr, which this config does not have"]
    assert models_change(old, old, "x", "y") == []
    # several names read as a list; a name from a forged record is quoted, and bounded
    said = models_change(["a", "b", "c"], [], "the plan names", "the plan does not name")
    assert said == ["the plan names a, b and c, which this config does not have"]
    said = models_change(["a\nINFO", *map(str, range(30))], ["z"], "covers", "misses", most=3)
    assert said == [
        "this config has z, which misses",
        "covers 0, 1, 10 and 28 more, which this config does not have",
    ]
    assert "'a\\nINFO'" in models_change(["a\nINFO"], [], "covers", "misses")[0]


def test_a_config_whose_declared_costs_changed_is_planned_again() -> None:
    from mlink.operators.controller_rules import declared_cost_change

    extra = {"model_ms": {"digit": 40.0, "parity": 2.0, "value": 3.5}}
    assert declared_cost_change(extra, {"digit": {"ms": 40.0}, "parity": {"ms": 2.0}}) is None
    assert declared_cost_change(extra, {}) is None  # measured costs: the plan's own
    assert declared_cost_change({}, {"digit": {"ms": 1.0}}) is None  # a plan with no prices
    why = declared_cost_change(extra, {"digit": {"ms": 10.0}, "value": {"memory_mb": 5.0}})
    assert why == (
        "the config declares other model costs than the plan in force was made for: "
        "digit 40 -> 10 ms"
    )
