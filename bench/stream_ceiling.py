"""How much of stream synthesis's shortfall is estimation, and how much is the modes themselves.

    python bench/stream_ceiling.py deploy/configs/dnn.yaml --costs deploy/costs/dnn.json

The bench's offline stream row plans from curves estimated on the warm-up (the first ``--train``
of each stream) and is scored on the rest. Here the same planner, at the same budgets, is also
given curves and detector heads fitted on every frame, and the paper's links' agreement on the
scored frames: an oracle no deployment has. Its realised agreement is what the synthesis modes
keep at that budget when the estimates are right; its prediction gap shows whether the
estimator is biased when its data is representative. Per model, the warm-up's prior scored on
the warm-up and on the rest shows how far the content moves after the warm-up; ``--options
MODEL`` lists every option of a model (mode and period) as the warm-up and every frame price it,
to see which options the warm-up over-promises and so makes the planner prefer. ``--switch
SHARE...`` replays the warm-up plan switched to the oracle plan after that share of each stream:
how early a live correction would have to act to win what the oracle wins.

Uses the cached outputs and the cost table ``--costs`` names (as ``mlink bench`` does; the
benchmarks pass the committed ``deploy/costs/<workload>.json``); seed 0 trains the paper's
links, as the bench's first seed does.
"""

from __future__ import annotations

import numpy as np

from mlink.eval.experiment import TrainedWorkload
from mlink.eval.streaming.method import OFFLINE, stream_mlink
from mlink.eval.streaming.replay_args import replay_parser, replay_split
from mlink.eval.streaming.simulate import StreamRun
from mlink.eval.temporal.geometry import positions
from mlink.linkstore.metrics import agreement
from mlink.linkstore.rows import prior_output
from mlink.linkstore.streamfit import Curve
from mlink.linkstore.streamoptions import option
from mlink.linkstore.streamplan import DEFAULT_PERIODS, StreamPlan


def plan_rows(
    trained: TrainedWorkload, budgets: list[float]
) -> tuple[list[str], dict[float, list[StreamRun]]]:
    """The summary row per budget, and the two replays (warm-up, oracle) behind it: each plan's
    estimate and forecast bound (what it promises) beside what it kept."""
    full = trained.workload.total_cost()
    rows, runs = [], {}
    for fraction in budgets:
        cells = []
        runs[fraction] = [
            stream_mlink(trained, fraction * full, OFFLINE, oracle=oracle)
            for oracle in (False, True)
        ]
        for run in runs[fraction]:
            steady = run.steady()
            pred, real = run.plans[0].estimate, float(steady["accuracy"] or 0.0)
            bound = float(np.mean(list(run.plans[0].forecast().values())))
            saved = float(steady["compute_saved"] or 0.0)
            cells.append(
                f"{pred:.1%} | {real:.1%} | {pred - real:+.1%} | {bound:.1%} "
                f"| {bound - real:+.1%} | {saved:.1%}"
            )
        rows.append(f"| {fraction:.0%} | " + " | ".join(cells) + " |")
    return rows, runs


def bound_at(
    plan: StreamPlan, curves: dict[str, list[Curve]], z: float, corr: float = OFFLINE.corr
) -> float:
    """The mean over models of ``plan``'s lower bounds (no probes) at width ``z``: the same
    options, a different confidence. The paper's links keep the bound they were planned with."""
    bounds = []
    for m, c in plan.choices.items():
        if c.period == 1 or c.mode.kind == "links":
            bounds.append(c.lower)
            continue
        curve = next(cv for cv in curves[m] if cv.mode == c.mode)
        chosen = option(curve, c.period, 0, 0.0, z, 0, corr)
        if chosen is None:
            raise ValueError(f"{m}'s curve no longer covers period {c.period}")
        bounds.append(chosen.lower)
    return float(np.mean(bounds))


def bound_rows(runs: dict[float, list[StreamRun]], zs: list[float]) -> list[str]:
    """Per budget: the warm-up plan's bound at each width in ``zs`` minus what it kept."""
    rows = []
    for fraction, (warm, _) in runs.items():
        real = float(warm.steady()["accuracy"] or 0.0)
        gaps = [bound_at(warm.plans[0], warm.fits[0].curves, z) - real for z in zs]
        rows.append(
            f"| {fraction:.0%} | {real:.1%} | " + " | ".join(f"{g:+.1%}" for g in gaps) + " |"
        )
    return rows


def model_rows(models: list[str], pair: list[StreamRun]) -> list[str]:
    """Per model: what each plan does with it and what that kept on the scored frames."""
    rows = []
    for m in models:
        cells = []
        for run in pair:
            kept = float(run.per_frame[m][~run.probe].mean())
            cells.append(f"{run.plans[0].describe(m)} | {kept:.1%}")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def option_rows(pair: list[StreamRun], model: str, model_ms: float) -> list[str]:
    """Per mode and period of ``model`` (0: probes only): the warm-up curves' estimate and lower
    bound, and the estimate of the same option from curves fitted on every frame."""
    warm, oracle = (run.fits[0].curves[model] for run in pair)
    rows = []
    for curve in warm:
        best = next((c for c in oracle if c.mode == curve.mode), None)
        for period in DEFAULT_PERIODS:
            here = option(curve, period, 0, model_ms, OFFLINE.z, 0, OFFLINE.corr)
            there = option(best, period, 0, model_ms, OFFLINE.z, 0, OFFLINE.corr) if best else None
            if here is None:
                continue
            every = f"{there.estimate:.1%}" if there is not None else "-"
            rows.append(
                f"| {model} | {curve.mode.key()} | {period or 'probes only'} "
                f"| {here.estimate:.1%} | {here.lower:.1%} | {every} | {here.cost_ms:.1f} |"
            )
    return rows


def switch_rows(trained: TrainedWorkload, pair: list[StreamRun], shares: list[float]) -> list[str]:
    """What a perfect re-plan made partway through would keep: each stream's frames before
    ``share`` of its length under the warm-up plan, after it under the oracle plan (each run's
    own outputs and costs per frame; the two runs' memories differ slightly at the switch).
    The most any live correction of the warm-up's estimates could win, by when it acts."""
    wl = trained.workload
    warm, oracle = pair
    test = np.sort(np.asarray(trained.test_idx))
    seq = positions(wl.streams)
    length: dict[str, int] = {}
    for i in range(len(wl.streams)):
        length[wl.streams[i]] = max(length.get(wl.streams[i], 0), int(seq[i]) + 1)
    keep = ~warm.probe
    full = wl.total_cost()
    rows = []
    for share in shares:
        after = np.array([seq[i] >= share * length[wl.streams[i]] for i in test.tolist()])
        per_model = [
            np.where(after, oracle.per_frame[m], warm.per_frame[m])[keep].mean() for m in wl.models
        ]
        kept = float(np.mean(per_model))
        cost = float(np.where(after, oracle.cost_ms, warm.cost_ms)[keep].mean())
        rows.append(f"| {share:.0%} | {kept:.1%} | {1.0 - cost / full:.1%} |")
    return rows


def drift_rows(trained: TrainedWorkload) -> list[str]:
    wl = trained.workload
    rows = []
    for m in wl.models:
        spec = wl.specs[m]
        warm = [wl.outputs[m][i] for i in trained.train_idx]
        rest = [wl.outputs[m][i] for i in trained.test_idx]
        prior = prior_output(spec, warm)
        on_warm = float(np.mean(agreement(spec, [prior] * len(warm), warm)))
        on_rest = float(np.mean(agreement(spec, [prior] * len(rest), rest)))
        rows.append(f"| {m} | {on_warm:.1%} | {on_rest:.1%} | {on_rest - on_warm:+.1%} |")
    return rows


def main() -> None:
    parser = replay_parser(__doc__)
    parser.add_argument("--plans", action="store_true", help="each model's option in both plans")
    parser.add_argument(
        "--options", nargs="+", default=[], metavar="MODEL",
        help="every option of these models: warm-up estimate and bound, estimate from every frame",
    )  # fmt: skip
    parser.add_argument(
        "--bounds", type=float, nargs="+", default=[], metavar="Z",
        help="also print the warm-up plan's lower bound at these widths (standard errors)",
    )  # fmt: skip
    parser.add_argument(
        "--switch", type=float, nargs="+", default=[], metavar="SHARE",
        help="also: the warm-up plan switched to the oracle plan after this share of each stream",
    )  # fmt: skip
    args = parser.parse_args()
    trained = replay_split(args)
    workload = trained.workload
    print(f"## {workload.name}: warm-up {args.train:.0%} of each stream, offline stream plans\n")
    print("| budget | warm-up plan: predicted | realised | gap | forecast bound | gap | saved "
          "| oracle plan: predicted | realised | gap | forecast bound | gap | saved |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows, runs = plan_rows(trained, args.budgets)
    print("\n".join(rows), flush=True)
    if args.bounds:
        print("\n| budget | warm-up plan kept | " + " | ".join(
            f"bound at z = {z:g} minus kept" for z in args.bounds) + " |")  # fmt: skip
        print("|---|---|" + "---|" * len(args.bounds))
        print("\n".join(bound_rows(runs, args.bounds)))
    for fraction, pair in runs.items() if args.plans else ():
        print(f"\n| model at {fraction:.0%} | warm-up plan | realised | oracle plan | realised |")
        print("|---|---|---|---|---|")
        print("\n".join(model_rows(trained.workload.models, pair)))
    for fraction, pair in runs.items() if args.switch else ():
        print(f"\n| budget {fraction:.0%}: switched to the oracle plan after | kept | saved |")
        print("|---|---|---|")
        print("\n".join(switch_rows(trained, pair, args.switch)))
    if args.options:
        print("\n| model | mode | period | warm-up estimate | lower bound "
              "| estimate from every frame | ms per frame |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
    for m in args.options:  # the curves do not depend on the budget: the first budget's fits
        print("\n".join(option_rows(runs[args.budgets[0]], m, float(workload.costs[m]["ms"]))))
    print("\n| model | warm-up prior on the warm-up | on the rest | change |")
    print("|---|---|---|---|")
    print("\n".join(drift_rows(trained)))


if __name__ == "__main__":
    main()
