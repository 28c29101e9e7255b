"""``mlink check``: will this config work? Answered in seconds, before any worker.

A config can fail in three places a user only finds out about once workers are up: loading it
(:func:`~mlink.deploy.config.load_config`), building its models (a misspelt factory argument,
checked by :meth:`~mlink.deploy.config.ModelConfig.build`), and calling them (a model that raises
or answers outside its spec). The first two are the config's own checks; the third runs every
model on the first few frames of the source through the reference run's own call and validator
(:func:`~mlink.eval.outputs.timed_output`), so a fault fails here with the error `mlink run`'s
comparison would end on, naming the model, the frame and the fault. A model whose calls here
take longer than its ``timeout_s`` is a problem too: in a worker every call would be an error.
No broker is needed, except for a ``source: {topic: ...}`` config: its first frames are read from
the config's broker, as a worker would read them but in no consumer group, so the pipeline's
offsets are untouched (:func:`~mlink.deploy.topic_peek.peek_frames`).

The budget is judged only as far as existing code can judge it without links: its limits are
resolved against the cost table the controller would start from (declared costs over the ones
timed here, :func:`~mlink.operators.controller.model_costs`), and the cheapest plan of the
paper's active sets (:func:`~mlink.linkstore.selection.cheapest_feasible_budget`) is asked for
with links still free. A budget below that fits nothing whatever links are learnt; one above may
still not fit once link costs are known. Stream schedules and accuracy targets are planned from
trained links and are not judged.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlink.deploy.config import ConfigError, ModelConfig, PipelineConfig
from mlink.deploy.source import iter_source
from mlink.eval.memory import single_threaded
from mlink.eval.outputs import ModelRunError, timed_output, warm_up
from mlink.linkstore.budget import full_cost, typical_ms
from mlink.linkstore.selection import Problem, cheapest_feasible_budget
from mlink.linkstore.store import store_problem
from mlink.operators.controller import model_costs

__all__ = [
    "DEFAULT_FRAMES",
    "BudgetCheck",
    "CheckReport",
    "ModelCheck",
    "check_config",
    "render_check",
]

DEFAULT_FRAMES = 3
#: How a model's fault ends here: what to do next, instead of what the reference run did not cache.
HINT = "run `mlink check` again once it is fixed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCheck:
    """One model after its calls: ``ms`` is its cost per call on the checked frames (None when
    it failed, or a source topic gave no frame to call it on); ``error`` is why it failed, in the
    words of the config's or the reference run's own error."""

    name: str
    kind: str
    ms: float | None
    timeout_s: float
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetCheck:
    """The config's budget against the cost table: ``fits`` is None when it is not judged
    (``note`` says why), False when no plan fits even before link costs."""

    written: dict[str, float]
    limits: dict[str, float]
    full: dict[str, float]
    cheapest: dict[str, float]
    fits: bool | None
    note: str


@dataclass(slots=True, kw_only=True)
class CheckReport:
    """What ``mlink check`` found: ``problems`` are what keeps the config from working."""

    config: str
    frames: int
    models: list[ModelCheck]
    budget: BudgetCheck
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_config(config: PipelineConfig, frames: int = DEFAULT_FRAMES) -> CheckReport:
    """Build every model and run it on the first ``frames`` frames of the source.

    A model that cannot be built (:class:`~mlink.deploy.config.ConfigError`), raises or answers
    outside its spec (:class:`~mlink.eval.outputs.ModelRunError`) is reported with that error and
    not called again; the others go on, so one check names every broken model. A source that
    cannot be read raises; a source topic is read from ``config.broker`` (:func:`_topic_pairs`).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    notes: list[str] = []
    problems: list[str] = []
    if config.source.topic:  # its frames are on Kafka: the first few, read without a trace
        pairs = _topic_pairs(config, frames, notes, problems)
    else:
        try:
            source = itertools.islice(iter_source(config.source), frames)
            pairs = [(stream, np.asarray(frame)) for stream, frame in source]
        except (ConfigError, FileNotFoundError):
            raise
        except Exception as exc:  # a source factory's own fault: the config's to fix, named
            raise ConfigError(
                f"source: reading its first frames raised {type(exc).__name__}: {exc}"
            ) from exc
        if not pairs:
            raise ConfigError("source: it yields no frames; check its path, glob or factory")
    models = [_check_model(m, pairs) for m in config.models]
    problems += [c.error for c in models if c.error is not None]
    problems += [
        f"model {c.name!r} took {c.ms:.0f} ms a call, over its timeout_s {c.timeout_s:g}: every "
        f"call would be an error output; raise models[{c.name}].timeout_s"
        for c in models
        if c.ms is not None and c.ms > c.timeout_s * 1000.0
    ]
    store = store_problem(config.links.store)  # every worker opens it, the trainer writes it
    problems += [store] if store else []
    budget = _budget(config, {c.name: c.ms for c in models if c.ms is not None})
    if budget.fits is False:
        problems.append(budget.note)
    return CheckReport(
        config=config.name,
        frames=len(pairs),
        models=models,
        budget=budget,
        notes=notes,
        problems=problems,
    )


def _topic_pairs(
    config: PipelineConfig, frames: int, notes: list[str], problems: list[str]
) -> list[tuple[str, np.ndarray]]:
    """The first ``frames`` frames of the source topic on the config's broker, read like a
    worker reads them but in no consumer group (:func:`~mlink.deploy.topic_peek.peek_frames`).

    What a user must fix is a problem: a broker that does not answer, a topic it does not have,
    a topic whose first records a worker would all dead-letter (the wrong ``source.format``).
    What is not the config's fault is a note and the models are built but not called: no broker
    given (a deployment may set ``MLINK_BROKER``), or an empty topic (no producer has written
    yet; the config may well be right)."""
    topic, broker = config.source.topic, config.broker
    if not broker:
        notes.append(
            f"source is the Kafka topic {topic!r} and no broker is given: models were built but "
            "not called; pass --broker host:port (or set `broker:` or MLINK_BROKER) to call "
            "them on its first frames"
        )
        return []
    from mlink.deploy.topic_peek import TopicReadError, peek_frames

    try:
        peek = peek_frames(config, broker, frames)
    except TopicReadError as exc:
        problems.append(f"source.topic {topic!r}: {exc}; models were built but not called")
        return []
    if not peek.read:
        notes.append(
            f"source topic {topic!r} on {broker} is empty: models were built but not called; "
            "run `mlink check` again once frames are on it"
        )
    elif not peek.frames:
        problems.append(
            f"source.topic {topic!r}: none of its first {peek.read} record(s) is a frame of "
            f"format {config.source.format!r} a worker can read, so workers would dead-letter "
            f"them; check source.format and what its producers write. First: {peek.rejected[0]}"
        )
    elif peek.rejected:
        notes.append(
            f"{len(peek.rejected)} of the first {peek.read} records of {topic!r} would be "
            f"dead-lettered by a worker; first: {peek.rejected[0]}"
        )
    return peek.frames


def _check_model(model: ModelConfig, pairs: list[tuple[str, np.ndarray]]) -> ModelCheck:
    """Build ``model`` and time its calls on ``pairs``, frame by frame and single-threaded like
    the reference run, after one untimed warm-up call. A factory that raises is the config's to
    fix, named like a misspelt argument is, not a traceback."""
    kind, timeout_s = model.spec.kind, model.timeout_s

    def failed(error: str) -> ModelCheck:
        return ModelCheck(name=model.name, kind=kind, ms=None, timeout_s=timeout_s, error=error)

    try:
        fn = model.build()
    except ConfigError as exc:  # a misspelt argument, a factory that is not callable ...
        return failed(str(exc))
    except Exception as exc:  # the factory itself raised (a missing module, weights file ...)
        return failed(
            f"models[{model.name}]: factory {model.factory!r} raised {type(exc).__name__}: {exc}"
        )
    times: list[float] = []
    first_s = max(WARM_UP_S, WARM_UP_TIMEOUTS * timeout_s)  # a lazy set-up may take a while
    try:
        with single_threaded():
            if pairs:
                _within(first_s, lambda: warm_up(fn, pairs[0][1], model.name, HINT))
            for index, (stream, frame) in enumerate(pairs):
                out = _within(
                    max(CALL_S, CALL_TIMEOUTS * timeout_s),
                    functools.partial(
                        timed_output, fn, model.spec, frame, model.name, index, stream, HINT
                    ),
                )
                times.append(out[1])
    except ModelRunError as exc:
        return failed(str(exc))
    except _NoAnswer as exc:
        return failed(
            f"model {model.name!r} did not return within {exc.seconds:g} s (timeout_s "
            f"{timeout_s:g}): in a worker every call would be an error output; raise "
            f"models[{model.name}].timeout_s or fix the model"
        )
    ms = typical_ms(times) if times else None
    return ModelCheck(name=model.name, kind=kind, ms=ms, timeout_s=timeout_s)


#: How long `mlink check` waits for a call before it gives up on the model: the first (untimed)
#: call the longer of WARM_UP_S and WARM_UP_TIMEOUTS x its timeout_s, every timed one the longer
#: of CALL_S and CALL_TIMEOUTS x timeout_s (a slow call that returns is still timed and reported
#: against timeout_s). A call past it is left on its daemon thread; the model is not called again.
WARM_UP_S, WARM_UP_TIMEOUTS, CALL_S, CALL_TIMEOUTS = 30.0, 10.0, 5.0, 10.0


class _NoAnswer(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` on a daemon thread; _NoAnswer when it has not returned within ``seconds``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="mlink-check-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise _NoAnswer(seconds)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _budget(config: PipelineConfig, measured_ms: dict[str, float]) -> BudgetCheck:
    names = config.model_names
    declared = config.declared_costs()
    costs = model_costs(names, declared, {m: {"ms": ms} for m, ms in measured_ms.items()})
    written = config.budget_dict()
    untimed = [m for m in names if m not in measured_ms and "ms" not in declared.get(m, {})]
    if untimed and {"ms", "fraction"} & set(written):
        note = f"no ms for {', '.join(untimed)}: not run, and no cost declared"
        return BudgetCheck(written=written, limits={}, full={}, cheapest={}, fits=None, note=note)
    full = {
        r: full_cost(costs, r) for r in ("ms", "memory_mb") if any(r in c for c in costs.values())
    }
    limits = config.budget.resolve(full)

    def unjudged(note: str) -> BudgetCheck:
        return BudgetCheck(
            written=written, limits=limits, full=full, cheapest={}, fits=None, note=note
        )

    if not limits:
        return unjudged("accuracy targets only: planned from trained links, not judged here")
    if config.links.stream and set(limits) <= {"ms"}:
        return unjudged("stream schedules are planned from trained links, not judged here")
    problem = Problem(models=names, costs=costs, budget=limits, agreement=_no_links)
    cheapest = cheapest_feasible_budget(problem)
    over = {r: v for r, v in cheapest.items() if v > limits[r] * (1 + 1e-9)}
    fits = not over
    note = (
        f"the cheapest plan needs {_fmt(cheapest)} before link costs; links are judged once trained"
        if fits
        else f"budget {_fmt(limits)} fits no plan: the cheapest (one model, links free) needs "
        f"{_fmt(cheapest)}; raise the budget in the config"
    )
    return BudgetCheck(
        written=written, limits=limits, full=full, cheapest=cheapest, fits=fits, note=note
    )


def _no_links(active: frozenset[str], target: str) -> float:
    """No link is trained yet: nothing is synthesized better than chance (cost-only question)."""
    return 0.0


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


def render_check(report: CheckReport, console: Console) -> None:
    """The check as a table, then the budget, notes, and every problem on a red line."""
    table = Table(title=f"{report.config}: every model on {report.frames} frame(s)")
    for column in ("model", "output", "ran", "ms/call"):
        table.add_column(column, justify="right" if column == "ms/call" else "left")
    for c in report.models:
        ran = (
            Text("failed", "red")
            if c.error
            else Text("too slow", "red")
            if c.ms is not None and c.ms > c.timeout_s * 1000.0
            else Text("ok", "green")
            if c.ms is not None
            else Text("not run", "yellow")
        )
        table.add_row(Text(c.name), c.kind, ran, "-" if c.ms is None else f"{c.ms:.2f}")
    console.print(table)
    b = report.budget
    resolved = f" = {_fmt(b.limits)}" if b.limits and b.limits != b.written else ""
    full = f" of {_fmt(b.full)} for every model" if b.full else ""
    said = {True: ("fits", "green"), False: ("does not fit", "red"), None: ("not judged", "yellow")}
    word, style = said[b.fits]
    why = "" if b.fits is False else f" ({b.note})"  # False: the note is a problem, below
    console.print(Text.assemble(f"budget {_fmt(b.written)}{resolved}{full}: ", (word, style), why))
    for note in report.notes:
        console.print(Text(note, "yellow"))
    for problem in report.problems:
        console.print(Text(problem, "red"))
