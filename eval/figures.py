"""How results are summarised, the same way for every method, the bench and the run summary.

*All models* agreement counts every model on every frame, with executed outputs scoring 1: it says
what the consumer of the results gets, and flatters a plan that runs most models. *Synthesized
only* agreement counts only outputs that were not computed by the real model on that frame
(synthesized by links, reused, guessed by a prior or a multi-task head): it says how far such an
output can be trusted. Both are shown side by side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["mean_spread", "synthesized_agreement"]


def synthesized_agreement(
    per_model: Mapping[str, float], run_rate: Mapping[str, float]
) -> float | None:
    """Mean agreement over the (frame, model) outputs the real model did not compute.

    ``per_model[m]`` is ``m``'s mean agreement over the evaluation frames, ``run_rate[m]`` the
    share of those frames on which ``m`` really ran (where it scores 1). So ``m`` contributes
    ``per_model[m] - run_rate[m]`` agreement over ``1 - run_rate[m]`` frames. None when every
    model ran on every frame.
    """
    kept = sum(max(0.0, per_model[m] - run_rate.get(m, 0.0)) for m in per_model)
    share = sum(1.0 - run_rate.get(m, 0.0) for m in per_model)
    return float(kept / share) if share > 1e-9 else None


def mean_spread(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over runs (seeds); None parts are skipped.

    The spread is 0.0 for a single run and None when there is no value at all.
    """
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
