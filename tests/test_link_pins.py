"""Pinning link versions (`mlink links`) without a broker: how the replayed control state folds
pins in, which version the controller wants, what is refused, pruning, and what status says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from mlink.deploy.cli import app
from mlink.deploy.link_pins import (
    PinError,
    check_pinnable,
    link_rows,
    pin_message,
    rollback_version,
)
from mlink.deploy.status_view import render_links
from mlink.linkstore.store import LinkStore
from mlink.operators.relearn import lost_pin, relearn_message, unpin_lost_message
from mlink.operators.state import ControlState
from mlink.topics.codec import decode_record, encode_record
from mlink.topics.records import ControlMessage
from tests.test_control_state import active_set, control, snapshot
from tests.test_pipeline_e2e import FAST_MODELS, write_config
from tests.test_status_view import rendered, stream_status
from tests.test_store import flip_byte, make_meta, make_tensors

MODELS = ("digit", "parity", "value")


def announced(*versions: int) -> ControlState:
    state = ControlState(MODELS)
    for version in versions:
        assert not state.apply(control("link_version", link_version=version)).rejected
    return state


def wire(message: ControlMessage) -> ControlMessage:
    """As a worker reads it: through the record's own checks."""
    return decode_record(encode_record(message), ControlMessage)


def test_a_pin_holds_the_wanted_version_through_newer_announcements() -> None:
    state = announced(1, 2)
    assert state.wanted_links == 2
    assert state.apply(wire(pin_message(1, True))).status == "applied"
    assert (state.pinned_links, state.latest_links, state.wanted_links) == (1, 2, 1)
    state.apply(control("link_version", link_version=3))  # the trainer saves another
    assert (state.latest_links, state.wanted_links) == (3, 1)
    state.apply(wire(pin_message(1, False)))
    assert (state.pinned_links, state.wanted_links) == (None, 3)


def test_a_pin_never_lowers_the_newest_version_the_log_named() -> None:
    state = announced(5)
    state.apply(wire(pin_message(2, True)))
    assert state.latest_links == 5  # the trainer numbers new versions above it


@pytest.mark.parametrize("pin", [1, "yes", None, [True]])
def test_a_malformed_pin_is_rejected_and_changes_nothing(pin: Any) -> None:
    state = announced(1, 2)
    before = snapshot(state)
    outcome = state.apply(control("link_version", link_version=1, extra={"pin": pin}))
    assert outcome.rejected and "pin" in outcome.reason
    assert snapshot(state) == before


def test_learning_the_links_again_ends_a_pin() -> None:
    """The store lost the links: the pinned version cannot be loaded any more, and the
    version trained next must be planned from."""
    state = announced(1, 2)
    state.apply(wire(pin_message(1, True)))
    state.apply(active_set(1, link_version=1))
    lost = relearn_message(MODELS, 2, {"fraction": 0.5}, 2, 0, "gone")
    assert state.apply(wire(lost))
    assert state.pinned_links is None
    state.apply(control("link_version", link_version=3))
    assert state.wanted_links == 3


def test_a_pin_the_store_lost_before_any_plan_used_it_is_ended_with_its_reason() -> None:
    """`mlink links --pin` checked the store, then a trainer that had not heard of the pin
    pruned the version: the controller ends the pin, and status keeps why until a new pin."""
    state = announced(1, 2, 3)
    state.apply(active_set(1, link_version=3))
    state.apply(wire(pin_message(2, True)))
    assert lost_pin(state.pinned_links, state.link_version) == 2  # ask the store about it
    assert state.apply(wire(unpin_lost_message(2, state.epoch, "v2 gone"))).status == "applied"
    assert (state.pinned_links, state.wanted_links, state.pin_ended) == (None, 3, "v2 gone")
    state.apply(wire(pin_message(3, True)))
    assert state.pin_ended is None and state.pinned_links == 3
    assert lost_pin(3, 3) is None  # in force: the relearn watches it
    assert lost_pin(None, 3) is None
    # the controller, behind in its replay, ends v2's pin after the operator pinned v3
    late = state.apply(wire(unpin_lost_message(2, state.epoch, "v2 gone")))
    assert late.status == "stale" and state.pinned_links == 3
    assert state.apply(control("link_version", link_version=0, extra={"pin": True})).rejected


def test_rollback_pins_the_newest_version_older_than_the_one_in_force() -> None:
    state = announced(1, 2, 3)
    state.apply(active_set(1, link_version=3))
    assert rollback_version(state, [1, 2, 3]) == 2
    assert rollback_version(state, [1, 3]) == 1  # v2 was pruned
    with pytest.raises(PinError, match="no version older than v3"):
        rollback_version(state, [3])
    with pytest.raises(PinError, match="warming up"):
        rollback_version(ControlState(MODELS), [1])


def test_only_a_version_the_store_holds_whole_can_be_pinned(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    for tag in (1, 2):
        store.save(make_tensors(tag), make_meta(tag))
    check_pinnable(store, 1)
    with pytest.raises(PinError, match=r"does not hold version 9 whole .*holds \[1, 2\]"):
        check_pinnable(store, 9)
    flip_byte(tmp_path / "v000001" / "tensors.safetensors", -1)
    with pytest.raises(PinError, match="version 1 whole"):
        check_pinnable(store, 1)


def test_pruning_keeps_a_protected_version(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    for tag in range(4):
        store.save(make_tensors(tag), make_meta(tag))
    assert store.prune(keep=1, protect={1}) == [2, 3]
    assert [m.version for m in store.versions()] == [1, 4]


def test_link_rows_say_which_version_is_in_force_pinned_and_newest(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    for tag in range(3):
        store.save(make_tensors(tag), make_meta(tag))
    state = announced(1, 2, 3)
    state.apply(wire(pin_message(2, True)))
    state.apply(active_set(1, link_version=2))
    flags = [(r.version, r.in_force, r.pinned, r.newest) for r in link_rows(state, store)]
    assert flags == [(1, False, False, False), (2, True, True, False), (3, False, False, True)]


def test_rows_read_what_the_trainer_writes_and_survive_what_it_does_not(tmp_path) -> None:
    store = LinkStore(tmp_path)
    store.save(make_tensors(1), {"links": [{"val_score": 0.5}, {"val_score": 1}], "n_samples": 9})
    store.save(make_tensors(2), {"links": {"val_score": "x"}})  # another writer's metadata
    store.save(make_tensors(3), {"links": ["val_score", {"val_score": "high"}]})
    rows = link_rows(ControlState(MODELS), store)
    assert [(r.links, r.samples, r.mean_val_score) for r in rows] == [
        (2, 9, 0.75),
        (0, None, None),
        (2, None, None),
    ]


def test_the_listing_marks_each_version(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    for tag in range(2):
        store.save(make_tensors(tag), make_meta(tag))
    state = announced(1, 2)
    state.apply(wire(pin_message(1, True)))
    state.apply(active_set(1, link_version=1))
    console = Console(width=100, record=True)
    render_links(link_rows(state, store), console)
    lines = [" ".join(line.split()) for line in console.export_text().splitlines()]
    assert any(line.startswith("v1 in force, pinned 20") for line in lines)
    assert any(line.startswith("v2 newest 20") for line in lines)
    narrow = Console(width=50, record=True)  # an 80-column terminal cut the marks off
    render_links(link_rows(state, store), narrow)
    assert "in force, pinned" in narrow.export_text()


def test_status_says_the_links_are_pinned_and_what_is_newer() -> None:
    text = " ".join(rendered(stream_status(pinned_links=2, latest_links=5)).split())
    assert (
        "links pinned to v2 (mlink links --unpin follows the newest again); the newest is v5"
        in text
    )
    assert "links pinned" not in rendered(stream_status(pinned_links=None))
    text = " ".join(rendered(stream_status(pinned_links=3, link_version=2)).split())
    assert "; v2 is in force until the controller re-plans" in text
    text = " ".join(rendered(stream_status(pinned_links=3, link_version=None)).split())
    assert "no links are in force until the controller re-plans" in text and "vNone" not in text


def test_the_cli_refuses_a_version_the_store_lacks_before_sending_anything(tmp_path) -> None:
    path, config = write_config(
        tmp_path, "pins", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    LinkStore(config.links.store).save(make_tensors(1), make_meta(1))
    base = ["links", str(path), "--broker", "127.0.0.1:1"]
    result = CliRunner().invoke(app, [*base, "--pin", "7"])
    assert result.exit_code == 2
    assert "does not hold version 7" in " ".join(result.output.split()), result.output
    result = CliRunner().invoke(app, [*base, "--pin", "1", "--unpin"])
    assert result.exit_code != 0 and "one of --pin" in result.output


def test_a_store_that_does_not_exist_is_named_not_created(tmp_path, monkeypatch) -> None:
    """Run from another directory than the workers', a relative store is not there: say so,
    and do not leave an empty store behind."""
    path, config = write_config(
        tmp_path, "pins", FAST_MODELS, partitions=1, warmup_frames=8, output_timeout_s=5.0
    )
    data = config.model_dump(mode="json")
    data["links"]["store"] = "relative/links"
    path.write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for extra in ([], ["--pin", "1"], ["--rollback"]):
        result = CliRunner().invoke(app, ["links", str(path), "--broker", "127.0.0.1:1", *extra])
        assert result.exit_code == 2, result.output
        assert "does not exist: a relative links.store" in " ".join(result.output.split())
    assert not (elsewhere / "relative").exists()


def test_a_forged_announcement_far_above_the_newest_cannot_raise_it_for_good() -> None:
    """latest_links only grows: one announcement of 2**53 would freeze it, and the trainer's
    next version (2**53 + 1) could not be announced at all."""
    state = announced(3)
    before = snapshot(state)
    outcome = state.apply(control("link_version", link_version=2**53))
    assert outcome.rejected and "jumps" in outcome.reason
    assert snapshot(state) == before
    assert state.apply(control("link_version", link_version=4)).status == "applied"
    assert state.latest_links == 4
