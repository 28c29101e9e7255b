"""`mlink status` for people, on constructed status dicts (no broker)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from mlink.deploy.pipeline_status import store_report
from mlink.deploy.status_view import render_status


def rendered(status: dict[str, Any], width: int = 100) -> str:
    console = Console(width=width, record=True)
    render_status(status, console)
    return console.export_text()


def stream_status(**changes: Any) -> dict[str, Any]:
    status = {
        "epoch": 4,
        "active": ["face_alt2_fast", "eyes", "yolo_faces_640"],
        "link_version": 2,
        "budget": {"fraction": 0.33},
        "predicted_accuracy": 0.932,
        "predicted_agreement": {
            "face_alt2_fast": 1.0,
            "eyes": 1.0,
            "yolo_faces_640": 0.931,
            "hog_people_fast": 0.944,
        },
        "predicted_synthesized_mean": 0.87,
        "predicted_promise": 0.901,
        "predicted_lower": {"yolo_faces_640": 0.859, "hog_people_fast": 0.88},
        "predicted_synthesized": {"yolo_faces_640": 0.908, "hog_people_fast": 0.94},
        "schedule": {
            "face_alt2_fast": "always runs",
            "eyes": "always runs",
            "yolo_faces_640": "every 4 (phase 0), follow(yolo_faces)",
            "hog_people_fast": "probes only, prior",
        },
        "replan_reason": None,
        "live_agreement": {"yolo_faces_640": 0.85, "hog_people_fast": 0.9},
        "live_synthesized_mean": 0.875,
        "live_probes": 9,
        "live_counts": {"yolo_faces_640": 4.2, "hog_people_fast": 9.0},
        "forecast_with_probes": 0.917,
        "plan_cost": {"ms": 203.7},
        "cost_table": "measured",
        "model_ms": {"eyes": 70.25, "face_alt2_fast": 30.4},
        "budget_ms": 204.0,
        "infeasible": None,
        "linkstore": {
            "root": "/tmp/links",
            "current": 2,
            "versions": [{"version": 1, "links": 12, "samples": 40}, {"version": 2, "links": 12}],
        },
        "lag": {"mlink.demo.frames": 3, "mlink.demo.samples": 0},
        "dead_letters": {"topic": "mlink.demo.dead-letter", "count": 0, "recent": []},
    }
    status.update(changes)
    return status


def test_a_stream_plan_shows_each_model_predicted_and_live() -> None:
    text = rendered(stream_status())
    assert (
        "epoch 4 · link version 2 · budget {'fraction': 0.33} = 204.0 ms/frame · plan 203.7 "
        "ms/frame" in text
    )
    assert "ms per call the plan was priced on: eyes 70.2, face_alt2_fast 30.4" in text
    row = next(line for line in text.splitlines() if line.startswith("hog_people_fast"))
    # all frames, synthesized frames, live on synthesized frames, effective probes
    assert row.split()[-4:] == ["94.4%", "94.0%", "90.0%", "9.0"]
    assert "probes only, prior" in row
    row = next(line for line in text.splitlines() if line.startswith("yolo_faces_640"))
    assert "every 4 (phase 0), follow(yolo_faces)" in text
    assert row.split()[-4:] == ["93.1%", "90.8%", "85.0%", "4.2"]
    assert "!" not in text  # 85.0% over 4.2 probes is within the noise of 90.8%
    assert "predicted: 93.2% all models, 87.0% synthesized only" in text
    assert "live on probes: 87.5% synthesized only (9 probes)" in text
    assert "forecast with probes: 91.7% all models" in text
    assert "forecast with probes" not in rendered(stream_status(forecast_with_probes=None))
    assert "promised: 90.1% all models (the plan's forecast bound" in text
    assert "promised" not in rendered(stream_status(predicted_promise=None))
    assert "current 2; v1 (12 links, 40 samples), v2 (12 links, ? samples)" in text
    assert "mlink.demo.frames 3" in text
    assert "model costs: measured live" in text
    assert "re-planned" not in text and "no plan" not in text


def test_live_agreement_clearly_below_its_prediction_is_flagged() -> None:
    status = stream_status(live_agreement={"yolo_faces_640": 0.6, "hog_people_fast": 0.9})
    text = rendered(status)
    row = next(line for line in text.splitlines() if line.startswith("yolo_faces_640"))
    assert "60.0% !" in row
    assert "! below its prediction beyond probe noise" in text and "yolo_faces_640" in text
    few = stream_status(live_agreement={"yolo_faces_640": 0.6}, live_counts={"yolo_faces_640": 1})
    assert "!" not in rendered(few)  # one probe says nothing yet


def test_what_an_operator_acts_on_is_said_plainly() -> None:
    text = rendered(
        stream_status(
            replan_reason="hog_people_fast: live 71.0% over 6 probes is below its target 90%",
            infeasible="no schedule meets the accuracy targets",
        )
    )
    assert "re-planned: hog_people_fast: live 71.0% over 6 probes" in text
    assert "no plan meets the budget or targets: no schedule meets the accuracy targets" in text
    assert "dead letters: none" in text
    assert "no room in the budget" not in text
    fragile = {
        "cost_rise": 0.05,
        "lower_now": 0.920,
        "lower_then": 0.900,
        "estimate_then": 0.948,
        "changes": {"eyes": "every 2 (phase 0), head(face_alt2_fast)"},
    }
    text = " ".join(rendered(stream_status(fragile=fragile), width=400).split())
    assert (
        "no room in the budget: model costs 5% higher would switch to a plan with mean lower "
        "bound 0.900 (now 0.920): eyes: every 2 (phase 0), head(face_alt2_fast)." in text
    )
    letters = {
        "topic": "mlink.demo.dead-letter",
        "count": 12,
        "recent": [
            {"at": 1.0, "stage": "ingest", "reason": "frame of 2**32 x 2**32 pixels [over limit]"},
            {"at": 2.0, "stage": "model:eyes", "reason": "x" * 400},
        ],
    }
    lines = rendered(stream_status(dead_letters=letters), width=400).splitlines()
    at = lines.index("dead letters: 12 in mlink.demo.dead-letter; the latest:")
    assert lines[at + 1] == "  model:eyes: " + "x" * 157 + "..."  # newest first, long ones cut
    # as written: neither markup ([over limit]) nor emoji (:eyes:) codes are rendered
    assert lines[at + 2] == "  ingest: frame of 2**32 x 2**32 pixels [over limit]"


def test_warm_up_and_the_papers_links_have_no_schedule() -> None:
    warming = rendered(
        {
            "epoch": 0,
            "models": ["eyes", "faces"],
            "active": "all (warming up)",
            "link_version": None,
            "budget": None,
        }
    )
    assert "warming up: every model runs until the first links are trained" in warming
    assert [x.split()[:4] for x in warming.splitlines() if x.startswith(("eyes", "faces"))] == [
        ["eyes", "runs", "(warm-up)", "-"],
        ["faces", "runs", "(warm-up)", "-"],
    ]
    assert "consumer lag: none" in warming and "empty" in warming
    links = rendered(
        stream_status(
            schedule=None, active=["eyes"], predicted_agreement={"eyes": 1.0, "face": 0.8}
        )
    )
    assert next(x for x in links.splitlines() if x.startswith("face ")).count("synthesized by")
    assert "runs on every frame" in links
    assert "content-weighted" not in links
    content = {"value": 0.861, "unseen": 0.07, "floor": 0.84, "results": 412, "epoch": 4}
    weighed = " ".join(rendered(stream_status(schedule=None, content_forecast=content)).split())
    assert "content-weighted: 86.1% all models, over the latest 412 results of this plan" in weighed
    assert "7.0% of them with content no estimate scored" in weighed


def test_it_fits_an_80_column_terminal_without_cutting_names() -> None:
    text = rendered(stream_status(), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "hog_people_fast" in text and "yolo_faces_640" in text


def test_a_store_missing_here_is_reported_and_not_created(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    report = store_report("linkstore-data/demo")  # relative, as in the shipped configs
    assert report["missing"] and report["root"] == str(tmp_path / "linkstore-data/demo")
    assert not (tmp_path / "linkstore-data").exists()
    text = rendered(stream_status(linkstore=report), width=400)  # a long tmp path
    assert "does not exist" in text and "absolute path or URL" in text
    (tmp_path / "linkstore-data/demo").mkdir(parents=True)
    assert store_report("linkstore-data/demo") == {
        "root": "linkstore-data/demo",
        "current": None,
        "versions": [],
    }


def test_live_workers_are_counted_and_none_is_said_plainly() -> None:
    group = {"group": "demo", "state": "Stable", "workers": 2, "members": ["a", "b"]}
    assert "live workers: 2 (consumer group demo, Stable, as the broker reports them)" in rendered(
        stream_status(workers=group)
    )
    gone = {"group": "demo", "state": "Empty", "workers": 0, "members": []}
    text = " ".join(rendered(stream_status(workers=gone)).split())
    assert "live workers: none in consumer group demo (Empty): no worker" in text
    assert "live workers: unknown" in rendered(stream_status(workers=None))


def test_a_group_that_is_not_settled_says_its_workers_answer_nothing() -> None:
    wedged = {"group": "demo", "state": "Unknown", "workers": 2, "members": ["a", "b"]}
    text = " ".join(rendered(stream_status(workers=wedged)).split())
    assert "the group is not settled (Unknown)" in text and "mlink repair-group" in text
    settled = {"group": "demo", "state": "Stable", "workers": 2, "members": ["a", "b"]}
    assert "not settled" not in rendered(stream_status(workers=settled))


def mixed_group(**sets: int) -> dict[str, Any]:
    workers = sum(sets.values())
    return {"group": "demo", "state": "Stable", "workers": workers, "model_sets": sets}


def flat(status: dict[str, Any]) -> str:
    return " ".join(rendered(status, width=400).split())


def test_workers_on_another_config_are_told_only_what_this_config_knows() -> None:
    """It said "each side refuses the other's plans" always, also to a worker left on the old
    config that had accepted the plan and found only its links unusable (a helper's rollout
    audit, stop 45)."""
    mixed = {"workers": mixed_group(aaaa1111=1, bbbb2222=1), "model_set": "aaaa1111"}
    refused = {"epoch": 5, "count": 2, "reason": "content table names models"}
    text = flat(stream_status(refused_plans=refused, **mixed))
    assert "1 on this config's models (aaaa1111), 1 on bbbb2222" in text
    assert "this config refuses the pipeline's newest plan (below); `mlink status` with" in text
    store = dict(stream_status()["linkstore"], in_force_for_other_models="x")
    text = flat(stream_status(linkstore=store, **mixed))
    assert (
        "this config's workers accept the plan in force but cannot use its links, trained for "
        "other models: they run every model" in text
    )
    text = flat(stream_status(**mixed))
    assert "worker left behind); this config's workers accept the plan in force; `mlink" in text
    assert "the other config says what its workers do" in text
    for status in (stream_status(**mixed), stream_status(refused_plans=refused, **mixed)):
        assert "each side" not in flat(status)


def test_rows_of_a_plan_from_links_for_other_models_show_no_figures() -> None:
    """Its predicted, synthesized and live figures are the other config's workers': this
    config's run every model (a helper's rollout audit, stop 45)."""
    store = dict(stream_status()["linkstore"], in_force_for_other_models="x")
    text = rendered(stream_status(linkstore=store), width=120)
    rows = [line.split() for line in text.splitlines() if line.startswith(("hog", "yolo", "eyes"))]
    assert len(rows) == 3
    assert all(row[-4:] == ["n/a"] * 4 and "runs (links for other models)" in " ".join(row)
               for row in rows)  # fmt: skip
    assert "94.4%" not in text and "predicted: 93.2%" not in text and "live on probes" not in text
    assert "promised" not in text and "forecast with probes" not in text
    assert "predicted and live agreement: n/a on this config's workers" in " ".join(text.split())
    assert "94.4%" in rendered(stream_status(), width=120)  # a plan for this config's models


def test_a_link_version_in_force_the_store_lost_is_said_in_the_headline(tmp_path) -> None:
    """The headline read "link version 1" over rows "synthesized by links" while the store held
    only v2 (pruned by the other config's trainer): a helper's rollout audit, stop 45."""
    import torch

    from mlink.linkstore.store import LinkStore
    from mlink.operators.state import ControlState

    store = LinkStore(tmp_path / "links")
    pruned = store.save({"x": {"w": torch.zeros(1)}}, {"models": {}})
    state = ControlState(("eyes",))
    state.link_version = pruned
    assert store_report(str(store.root), state)["in_force_missing"] is False
    kept = store.save({"x": {"w": torch.zeros(1)}}, {"models": {}})
    assert store.prune(1) == [pruned]  # by a trainer on the other config, keep_versions 1
    report = store_report(str(store.root), state)
    assert report["in_force_missing"] is True
    assert "in_force_missing" not in store_report(str(store.root))  # no version in force
    text = flat(stream_status(link_version=pruned, linkstore=report))
    assert f"epoch 4 · link version {pruned} (not in the link store) · budget" in text
    assert (
        f"link version {pruned} of the plan in force is not in the link store (it holds "
        f"v{kept}; it was pruned or lost): a worker of this config that had not loaded it runs "
        "every model on the plan's frames" in text
    )
    assert "learns the links again once it has been missing links.relearn_after_s" in text
    refused = {"epoch": 5, "count": 2, "reason": "content table names models"}
    text = flat(stream_status(link_version=pruned, linkstore=report, refused_plans=refused))
    assert "learns links only for those: restart every worker on one config" in text
    assert "not in the link store" not in flat(stream_status())


def test_a_plan_from_the_quick_first_links_says_so_until_the_full_ones_are_announced() -> None:
    quick = rendered(stream_status(link_version=2, latest_links=2, latest_quick=True))
    assert "link version 2 (quick first links; the full ones follow)" in quick
    full = rendered(stream_status(link_version=2, latest_links=3, latest_quick=False))
    assert "quick" not in full
    older = rendered(stream_status(link_version=2, latest_links=3, latest_quick=True))
    assert "quick" not in older  # the plan in force is not the quick version


def test_model_failures_are_counted_over_the_frames_each_model_ran_on() -> None:
    """An audit: "models that failed on the latest 2000 results: eyes 724/804" mixed a
    count of results with one of the frames the plan ran the model on."""
    failures = {
        "results": 2000,
        "models": {"eyes": {"failed": 724, "of": 804, "last_error": "RuntimeError: boom"}},
    }
    text = " ".join(rendered(stream_status(model_failures=failures), width=200).split())
    assert (
        "models that failed in the latest 2000 results: eyes on 724 of the 804 frames it ran "
        "on (RuntimeError: boom)"
    ) in text
    assert "724/804" not in text
