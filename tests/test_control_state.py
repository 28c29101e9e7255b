"""The strict control plane: ControlState.apply never raises, reports what it did, and a
rejected or stale message changes nothing. The forged messages of issue 9 are here verbatim."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mlink.operators.state import ApplyOutcome, ControlState
from mlink.topics.codec import decode_record, encode, encode_record
from mlink.topics.control import MAX_EPOCH_STEP
from mlink.topics.records import ControlMessage, DecodeError

MODELS = ("digit", "parity", "value")


def control(kind: str, epoch: int = 0, **fields: Any) -> ControlMessage:
    return ControlMessage(kind=kind, epoch=epoch, issued_at=1.0, **fields)  # type: ignore[arg-type]


def active_set(epoch: int, active: tuple[str, ...] = ("digit",), **fields: Any) -> ControlMessage:
    fields.setdefault("link_version", 1)
    return control("active_set", epoch, active=tuple(sorted(active)), **fields)


def forge(message: ControlMessage, **fields: Any) -> ControlMessage:
    """A message whose fields skip the record's own checks (a bug, or a future reader)."""
    forged = dataclasses.replace(message)
    for name, value in fields.items():
        object.__setattr__(forged, name, value)
    return forged


def snapshot(state: ControlState) -> tuple:
    return tuple(getattr(state, f.name) for f in dataclasses.fields(state))


def test_the_agreement_message_that_crashed_every_worker_is_rejected() -> None:
    """Issue 9: ``extra.live_agreement = 5`` raised TypeError on replay, for ever."""
    state = ControlState(MODELS)
    state.apply(active_set(1))
    poison = control("agreement", 1, extra={"live_agreement": 5, "probes": 10})
    data = encode_record(poison)  # the record class accepts it: only apply can judge it
    outcome = state.apply(decode_record(data, ControlMessage))
    assert outcome.status == "rejected" and outcome.rejected and not outcome
    assert "live_agreement must be a dict of model to float, got 5" in outcome.reason
    assert state.live_agreement == {} and state.live_probes == 0
    good = control("agreement", 1, extra={"live_agreement": {"value": 0.9}, "probes": 5})
    assert state.apply(good).status == "applied"
    assert state.live_agreement == {"value": 0.9} and state.live_probes == 5
    carried = {"live_agreement": {"value": 0.9}, "probes": 2, "live_counts": {"value": 4.2}}
    carried["live_started"] = {"value": 0.8}
    assert state.apply(control("agreement", 1, extra=carried)).status == "applied"
    assert state.live_counts == {"value": 4.2} and state.live_started == {"value": 0.8}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"live_agreement": {"value": 5}}, r"must be a float in \[0, 1\], got 5"),
        ({"live_agreement": {"value": -0.1}}, r"in \[0, 1\]"),
        ({"live_agreement": {"value": float("nan")}}, r"in \[0, 1\]"),
        ({"live_agreement": {"value": "0.5"}}, r"in \[0, 1\]"),
        ({"live_agreement": {"value": True}}, r"in \[0, 1\]"),
        ({"live_agreement": {"ghost": 0.5}}, r"unknown model 'ghost'"),
        ({"live_agreement": [0.5]}, r"must be a dict"),
        ({"probes": -1}, r"extra\.probes must be an int"),
        ({"probes": 1.5}, r"extra\.probes must be an int"),
        ({"probes": True}, r"extra\.probes must be an int"),
        ({"probes": 2**60}, r"extra\.probes must be an int"),
        ({"live_counts": {"value": -1.0}}, r"live_counts\['value'\] must be a float in \[0, "),
        ({"live_counts": {"value": float("inf")}}, r"live_counts"),
        ({"live_counts": 3}, r"live_counts must be a dict"),
        ({"live_started": {"value": 0.0}}, r"live_started\['value'\] must be a float in \(0, "),
        ({"live_started": {"ghost": 1.0}}, r"unknown model 'ghost'"),
    ],
)
def test_malformed_agreement_messages_are_rejected(extra: dict, reason: str) -> None:
    state = ControlState(MODELS)
    outcome = state.apply(control("agreement", 0, extra=extra))
    assert outcome.rejected
    assert re.search(reason, outcome.reason), outcome.reason


def test_the_epoch_that_froze_the_plan_is_refused() -> None:
    """Issue 9: an active set at epoch 2**64-1 was applied and froze every later change."""
    state = ControlState(MODELS)
    assert state.apply(active_set(1)).plan_changed
    forged = {**active_set(2, ("parity",)).to_dict(), "epoch": 2**64 - 1}
    with pytest.raises(DecodeError, match=r"ControlMessage\.epoch"):
        decode_record(encode(forged), ControlMessage)  # the replay loop skips it
    outcome = state.apply(forge(active_set(2, ("parity",)), epoch=2**64 - 1))
    assert outcome.rejected and "epoch" in outcome.reason
    assert state.apply(active_set(2, ("value",))).plan_changed  # later changes still apply
    assert (state.epoch, state.active, state.next_epoch()) == (2, ("value",), 3)


def test_epochs_only_grow_even_while_the_active_set_is_empty() -> None:
    state = ControlState(MODELS)
    assert state.apply(active_set(0)).status == "stale", "epoch 0 is the initial state"
    assert state.apply(active_set(5)).plan_changed
    for epoch in (5, 4, 0):
        outcome = state.apply(active_set(epoch, ("value",)))
        assert outcome.status == "stale" and not outcome
    assert (state.epoch, state.active) == (5, ("digit",))


def test_epoch_jumps_are_bounded() -> None:
    state = ControlState(MODELS)
    state.apply(active_set(3))
    outcome = state.apply(active_set(3 + MAX_EPOCH_STEP + 1, ("value",)))
    assert outcome.rejected and "jumps more than 1,000,000" in outcome.reason
    assert state.apply(active_set(3 + MAX_EPOCH_STEP, ("value",))).plan_changed


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (active_set(1, ()), "at least one model"),
        (active_set(1, ("digit", "ghost")), r"unknown models \['ghost'\]"),
        (control("budget", 0), "at least one budget key"),
        (control("budget", 0, budget={"target_agreement:ghost": 0.9}), "unknown model"),
        (active_set(1, budget={"target_agreement:ghost": 0.9}), "unknown model"),
        (control("link_version", 0), "link_version None"),
        (forge(active_set(1), epoch=-1), "epoch -1"),
        (forge(active_set(1), epoch=True), "epoch True"),
        (forge(active_set(1), link_version=2**60), "link_version"),
        (forge(active_set(1), probe_every=-3), "probe_every"),
        (forge(active_set(1), active=5), "cannot apply"),
        (forge(control("budget", 0, budget={"ms": 1.0}), budget={"ms": -1.0}), "budget"),
        (forge(control("budget", 0), kind="pause"), "unknown kind 'pause'"),
        (forge(control("agreement", 0), extra=None), "extra must be a dict"),
        ("not a message", "expected a ControlMessage, got str"),
        (None, "expected a ControlMessage, got NoneType"),
    ],
)
def test_bad_messages_are_rejected_and_change_nothing(message: Any, reason: str) -> None:
    state = ControlState(MODELS, probe_every=4)
    state.apply(active_set(1, ("parity",), link_version=2))
    before = snapshot(state)
    outcome = state.apply(message)
    assert isinstance(outcome, ApplyOutcome) and outcome.rejected, outcome
    assert re.search(reason, outcome.reason), outcome.reason
    assert snapshot(state) == before


def test_the_runtime_budget_is_the_latest_budget_message_in_log_order() -> None:
    """Issue 8: the controller reads the budget from the replayed log, so it survives fail-over."""
    log = [
        control("budget", 0, budget={"fraction": 0.5}),
        active_set(1, budget={"fraction": 0.5}),
        control("budget", 0, budget={"ms": 12.0, "memory_mb": 300.0}),
        control("budget", 0, budget={"target_agreement": 0.95, "target_agreement:value": 0.99}),
        control("agreement", 9),  # another epoch's agreement: stale
    ]
    state = ControlState(MODELS)
    assert state.requested_budget == {}
    outcomes = [state.apply(m) for m in log]
    assert [o.status for o in outcomes] == ["applied", "applied", "applied", "applied", "stale"]
    assert state.requested_budget == {"target_agreement": 0.95, "target_agreement:value": 0.99}
    assert state.budget == {"fraction": 0.5}, "the budget the active set was chosen for"
    rejected = forge(control("budget", 0, budget={"ms": 1.0}), budget={"ms": 0.0})
    assert state.apply(rejected).rejected
    assert state.requested_budget["target_agreement"] == 0.95, "a rejected budget is not taken"
    replayed = ControlState(MODELS)
    for message in log:
        replayed.apply(message)
    assert replayed.requested_budget == state.requested_budget


def test_outcomes_read_like_the_old_boolean() -> None:
    state = ControlState(MODELS)
    assert state.apply(active_set(1)) and not state.apply(active_set(1))
    assert not state.apply(control("budget", 0, budget={"ms": 3.0}))
    assert ApplyOutcome("applied").status == "applied" and not ApplyOutcome("applied").rejected


# -- any input, any order -----------------------------------------------------------------------

json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
names = st.sampled_from([*MODELS, "ghost", "", "a\nb", 5, None])
forged_messages = st.builds(
    lambda base, fields: forge(base, **fields),
    st.builds(
        control,
        st.sampled_from(["active_set", "budget", "link_version", "agreement"]),
        st.integers(0, 2**53),
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "kind": st.sampled_from(["active_set", "budget", "link_version", "agreement", "x", 3]),
            "epoch": st.integers(-(2**70), 2**70) | st.none() | st.floats(),
            "active": st.lists(names, max_size=4).map(tuple) | json,
            "budget": st.dictionaries(st.text(max_size=20) | st.integers(), json, max_size=3)
            | json,
            "link_version": st.integers(-(2**70), 2**70) | json,
            "probe_every": st.integers(-(2**70), 2**70) | json,
            "extra": st.fixed_dictionaries(
                {},
                optional={
                    "live_agreement": st.dictionaries(names, json, max_size=3) | json,
                    "probes": json,
                },
            )
            | json,
        },
    ),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(forged_messages | json, max_size=8))
@example([forge(active_set(1), link_version=None, probe_every=0, extra=[None])])  # found by CI
def test_apply_never_raises_and_keeps_the_state_valid(messages: list[Any]) -> None:
    state = ControlState(MODELS, probe_every=3)
    for message in messages:
        epoch, active = state.epoch, state.active
        outcome = state.apply(message)
        assert outcome.status in ("applied", "stale", "rejected")
        assert outcome.status != "rejected" or outcome.reason
        assert state.epoch >= epoch and 0 <= state.epoch <= 2**53
        assert set(state.active) <= set(MODELS)
        if outcome.plan_changed:
            assert outcome.status == "applied" and state.epoch > epoch
        else:
            assert (state.epoch, state.active) == (epoch, active)
        assert all(0.0 <= v <= 1.0 for v in state.live_agreement.values())
        state.plan(7)  # always plannable


def test_a_budget_with_two_compute_limits_is_refused_where_it_is_published_and_replayed():
    """Review: ``ms`` with ``fraction`` passed the CLI and the replay, then every re-plan failed
    on it and a pipeline in warm-up ran every model for good."""
    from mlink.topics.control import budget_problem

    assert "both 'ms' and 'fraction'" in budget_problem({"ms": 5.0, "fraction": 0.5})
    assert budget_problem({"ms": 5.0, "target_agreement": 0.9}) is None


def test_a_replan_without_new_probes_keeps_the_guards_corrections_and_drops_junk():
    """Review: a new link version or budget re-planned with no corrections, so a model the
    guard had turned back on was synthesized again after every retrain, and flapped."""
    from mlink.operators.stream_decision import carried_corrections

    extra = {"corrections": {"eyes": 0.09, "face": 1.2, "bad": "x", "neg": -1.0, "flag": True}}
    assert carried_corrections(extra) == {"eyes": 0.09, "face": 1.2}
    assert carried_corrections({"corrections": [0.5]}) == {}
    assert carried_corrections({}) == {}


def test_a_starting_worker_restates_an_edited_configs_budget_but_not_over_a_command():
    """Review: an edited config's budget did nothing on restart; the plan in force stayed."""
    from mlink.operators.budget_messages import config_budget_message
    from mlink.operators.state import BUDGET_ORIGIN

    state = ControlState(("a", "b"))
    assert config_budget_message(state, {"fraction": 0.9}) == (None, None)  # nothing planned
    state.apply(
        ControlMessage(
            kind="active_set", epoch=1, issued_at=1.0, active=("a",), budget={"fraction": 0.3}
        )
    )
    assert config_budget_message(state, {"fraction": 0.3}) == (None, None)  # a plain restart
    message, why = config_budget_message(state, {"fraction": 0.9})  # the config was edited
    assert why is None and message.kind == "budget" and message.budget == {"fraction": 0.9}
    assert message.extra == {BUDGET_ORIGIN: "config"}
    state.apply(message)
    assert state.requested_budget == {"fraction": 0.9} and state.budget_from_config
    message, _ = config_budget_message(state, {"fraction": 0.5})  # edited again: replaced
    assert message is not None and message.budget == {"fraction": 0.5}
    command = ControlMessage(kind="budget", epoch=1, issued_at=2.0, budget={"ms": 20.0})
    state.apply(command)  # `mlink budget --ms 20`: the operator's call wins over the file
    assert not state.budget_from_config
    message, why = config_budget_message(state, {"fraction": 0.5})
    assert message is None and "`mlink budget`" in why


def test_a_refused_budget_restores_the_one_in_force_and_is_said_until_the_next_request() -> None:
    """`mlink budget --ms 0.001` no plan meets: the controller sends the budget in force back
    with the refused one and why, so later re-plans do not plan for it, and a reader sees it."""
    from mlink.deploy.runner import budget_answer
    from mlink.operators.budget_messages import refusal_message

    state = ControlState(("digit", "parity"))
    state.apply(active_set(1, budget={"fraction": 0.3}))
    asked = {"ms": 0.001}
    state.apply(control("budget", 1, budget=asked))
    assert budget_answer(state, asked) is None  # not answered yet
    back = refusal_message(state, asked, "below the cheapest plan", {"fraction": 0.3})
    assert state.apply(decode_record(encode_record(back), ControlMessage)).status == "applied"
    assert state.requested_budget == state.budget == {"fraction": 0.3}
    assert state.budget_from_config  # the config's budget, restored as the config's
    assert state.budget_refused == {"budget": asked, "reason": "below the cheapest plan"}
    assert budget_answer(state, asked) == ("refused", "below the cheapest plan")
    state.apply(control("budget", 1, budget={"fraction": 0.5}))
    assert state.budget_refused is None and budget_answer(state, {"fraction": 0.5}) is None
    state.apply(active_set(2, budget={"fraction": 0.5}))
    assert budget_answer(state, {"fraction": 0.5}) == ("planned", "epoch 2")
    odd = control("budget", 2, budget={"ms": 5.0}, extra={"refused": {"budget": 1}})
    assert not state.apply(odd).rejected and state.budget_refused is None  # malformed: ignored


def test_the_state_knows_whether_the_newest_links_are_the_quick_first_ones() -> None:
    """A trainer that takes over after a worker stopped between its quick first links and the
    full ones must train the full ones: the announcement says which the newest version is."""
    state = ControlState(MODELS)
    assert state.latest_quick is False
    state.apply(control("link_version", link_version=1, extra={"quick": True}))
    assert (state.latest_links, state.latest_quick) == (1, True)
    state.apply(control("link_version", link_version=2))
    assert (state.latest_links, state.latest_quick) == (2, False)
    state.apply(control("link_version", link_version=1, extra={"quick": True}))  # a replay
    assert (state.latest_links, state.latest_quick) == (2, False)
    state.apply(control("link_version", link_version=3, extra={"quick": "yes"}))  # only True
    assert (state.latest_links, state.latest_quick) == (3, False)
