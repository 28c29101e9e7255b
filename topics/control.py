"""The rules a control message must keep, beyond the types its record checks.

The control topic steers every worker, and every worker replays it from the start after a
restart. One message that a worker cannot fold in must therefore be skipped, never crash the
worker, and never poison the state for the messages after it. These rules are pure functions on
plain values so the record (:class:`~mlink.topics.records.ControlMessage`), the worker's
replayed state (:class:`mlink.operators.state.ControlState`) and tests share them.

Epochs: an ``active_set`` epoch must be greater than the current one and at most
:data:`MAX_EPOCH_STEP` above it, and no epoch exceeds :data:`MAX_EPOCH` (2**53, the largest
integer every JSON and JavaScript reader holds exactly). A forged epoch near 2**64 can then
neither freeze the plan nor make the next epoch overflow the wire's 64-bit integers.

Budgets (``ControlMessage.budget``): only the keys of :data:`BUDGET_KEYS`, plus per-model
accuracy targets spelled ``f"{TARGET_PREFIX}{model}"`` (``"target_agreement:pose"``); every value
is a finite number > 0, and fractions and agreement targets are at most 1.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, Final

from mlink.topics.ids import id_problem

__all__ = [
    "BUDGET_KEYS",
    "MAX_EPOCH",
    "MAX_EPOCH_STEP",
    "MAX_FACTOR",
    "PIN_KEY",
    "QUICK_KEY",
    "TARGET_PREFIX",
    "UNIT_BUDGET_KEYS",
    "agreement_problem",
    "budget_problem",
    "pin_problem",
    "target_model",
]

MAX_EPOCH: Final = 2**53
"""Largest epoch (and link version) a control message may carry."""

MAX_EPOCH_STEP: Final = 10**6
"""Largest step from the current epoch to the next active set's: controllers step by 1, so a
larger jump is a forgery or a bug, and would burn the epoch space."""

MAX_FACTOR: Final = 1e6
"""Largest correction factor on a model's synthesized agreement a control message may carry
(``live_started``, ``corrections``); the guard's factors are ratios near 1, far below it."""

BUDGET_KEYS: Final = frozenset({"ms", "memory_mb", "fraction", "target_agreement"})
"""Budget keys: per-frame compute in ms, memory in MB, ms as a share of running every model,
and the global accuracy target of the accuracy-target mode."""

UNIT_BUDGET_KEYS: Final = frozenset({"fraction", "target_agreement"})
"""Budget keys whose values are shares, in (0, 1]."""

TARGET_PREFIX: Final = "target_agreement:"
"""Prefix of a per-model accuracy target key: ``"target_agreement:<model>"``."""


QUICK_KEY: Final = "quick"
"""``extra`` key of the trainer's ``link_version`` message: ``True`` for a cold pipeline's quick
first links (``links.first_epochs``), which the full ones follow."""

PIN_KEY: Final = "pin"
"""``extra`` key of a ``link_version`` message from an operator (``mlink links --pin``):
``True`` plans from its ``link_version`` until unpinned, whatever newer versions the trainer
announces; ``False`` follows the newest version again."""


def pin_problem(extra: Mapping[str, Any]) -> str | None:
    """Why a ``link_version`` message's pin is malformed, or None (also when it has none)."""
    if PIN_KEY in extra and type(extra[PIN_KEY]) is not bool:
        return f"extra.{PIN_KEY} must be true or false, got {extra[PIN_KEY]!r}"
    return None


def target_model(key: str) -> str | None:
    """The model a per-model target key names, or None if ``key`` is not one."""
    return key[len(TARGET_PREFIX) :] if key.startswith(TARGET_PREFIX) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range is no budget either
        return None


def budget_problem(budget: Any, models: Collection[str] | None = None) -> str | None:
    """Why ``budget`` is not a valid budget, or None if it is.

    With ``models``, per-model targets must name one of them.
    """
    if not isinstance(budget, Mapping):
        return f"expected a dict of budget keys to numbers, got {type(budget).__name__}"
    for key, value in budget.items():
        if not isinstance(key, str):
            return f"budget keys must be str, got {type(key).__name__}"
        model = target_model(key)
        if model is not None:
            problem = id_problem(model)
            if problem:
                return f"per-model target {key!r}: model name: {problem}"
            if models is not None and model not in models:
                return f"per-model target {key!r} names an unknown model; known: {sorted(models)}"
        elif key not in BUDGET_KEYS:
            known = ", ".join(sorted(BUDGET_KEYS))
            return (
                f"unknown budget key {key!r}; known keys are {known} and '{TARGET_PREFIX}<model>'"
            )
        number = _number(value)
        if number is None or not math.isfinite(number) or number <= 0:
            return f"budget {key!r} must be a finite number > 0, got {value!r}"
        if (model is not None or key in UNIT_BUDGET_KEYS) and number > 1:
            return f"budget {key!r} is a share and must lie in (0, 1], got {value!r}"
    if "ms" in budget and "fraction" in budget:  # two compute limits: no plan can be made
        return "budget sets both 'ms' and 'fraction'; give one compute limit"
    return None


def agreement_problem(extra: Any, models: Collection[str] | None = None) -> str | None:
    """Why the ``extra`` of an ``agreement`` message is malformed, or None.

    ``live_agreement`` (optional) maps models to floats in [0, 1]; ``probes`` (optional) is a
    non-negative int; ``live_counts`` (optional) maps models to their effective probes (floats
    in [0, 2**53]) and ``live_started`` to the positive correction factor each model's option
    started with (floats up to :data:`MAX_FACTOR`).
    """
    if not isinstance(extra, Mapping):
        return f"extra must be a dict, got {type(extra).__name__}"
    for key, low, high, open_low in (
        ("live_agreement", 0.0, 1.0, False),
        ("live_counts", 0.0, float(MAX_EPOCH), False),
        ("live_started", 0.0, MAX_FACTOR, True),
    ):
        problem = _per_model_floats(extra, key, low, high, open_low, models)
        if problem:
            return problem
    probes = extra.get("probes", 0)
    if type(probes) is not int or not 0 <= probes <= MAX_EPOCH:
        return f"extra.probes must be an int in [0, 2**53], got {probes!r}"
    return None


def _per_model_floats(
    extra: Mapping[str, Any],
    key: str,
    low: float,
    high: float,
    open_low: bool,
    models: Collection[str] | None,
) -> str | None:
    values = extra.get(key, {})
    if not isinstance(values, Mapping):
        return f"extra.{key} must be a dict of model to float, got {values!r}"
    span = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
    for model, value in values.items():
        if not isinstance(model, str) or id_problem(model):
            return f"extra.{key}: bad model name {model!r}"
        if models is not None and model not in models:
            return f"extra.{key} names an unknown model {model!r}; known: {sorted(models)}"
        number = _number(value)
        if number is None or not low <= number <= high or (open_low and number == low):
            return f"extra.{key}[{model!r}] must be a float in {span}, got {value!r}"
    return None
