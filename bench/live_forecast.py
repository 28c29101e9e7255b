"""Can a live pipeline forecast what its budget plan keeps, without re-planning?

    python bench/live_forecast.py deploy/configs/dnn.yaml --costs deploy/costs/dnn.json

In budget mode the live controller keeps its first plan until the links are retrained; probes
run every model on every 16th frame and score what the plan would have synthesized there. The
plan's up-front estimate comes from the warm-up and over-promises where the content changes
after it (BENCHMARKS.md, "Where the stream forecasts go wrong"). This replays the bench's split
(the first ``--train`` of each stream trains, seed 0, the committed cost table) with probes and
scores three forecasts of each frame's agreement, made before the frame, against what was kept:

- **up-front**: the first plan's estimate (all ``mlink status`` showed before this forecast);
- **promised**: the first plan's forecast bound (what it promises, ``mlink status``'s
  "promised");
- **plan in force**: the estimate of the plan each frame ran under (differs only with re-plans);
- **with probes**: the plan in force with each synthesized model's estimate rescaled by what its
  probes saw so far, what still rests on the warm-up taken at the plan's lower bound
  (:meth:`~mlink.linkstore.liveguard.LiveAgreement.forecast`, what ``mlink status`` shows as
  the forecast with probes).

Two replays per budget: the live budget mode (probes, no re-plan) and the bench's online row
(probes and the drift guard, which re-plans).
"""

from __future__ import annotations

from dataclasses import replace

from mlink.eval.streaming.method import OFFLINE, ONLINE, stream_mlink
from mlink.eval.streaming.replay_args import replay_parser, replay_split
from mlink.linkstore.liveguard import DECAY

#: the live budget mode: probes (scored, tallied with the guard's decay), no re-plan
LIVE_BUDGET = replace(OFFLINE, probe_every=16, probe_stride=7, guard_decay=DECAY)
REPLAYS = {"probes, no re-plan (live budget mode)": LIVE_BUDGET, "probes + drift guard": ONLINE}


def main() -> None:
    args = replay_parser(__doc__).parse_args()
    trained = replay_split(args)
    workload = trained.workload
    full = workload.total_cost()
    print(f"## {workload.name}: forecasts minus kept (points), warm-up {args.train:.0%}\n")
    print(
        "| replay | budget | kept | saved | re-plans | up-front | promised | plan in force "
        "| with probes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, config in REPLAYS.items():
        for fraction in args.budgets:
            r = stream_mlink(trained, fraction * full, config).result
            forecasts = (
                r.predicted_accuracy,
                r.predicted_forecast,
                r.predicted_in_force,
                r.predicted_live,
            )
            gaps = [(p or 0.0) - r.accuracy for p in forecasts]
            print(
                f"| {name} | {fraction:.0%} | {r.accuracy:.1%} | {r.compute_saved:.1%} | "
                f"{r.details['replans']} | " + " | ".join(f"{100 * g:+.1f}" for g in gaps) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
