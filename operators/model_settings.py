"""How a model is built and executed: a picklable factory, timeouts, and process isolation.

Plain frozen dataclasses so that ``deploy/`` can translate the YAML config into them and a user
embedding the operators can write them by hand. Everything here pickles: an isolated model is
built inside its child process from a :class:`ModelFactory`.
"""

from __future__ import annotations

import os
import pkgutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mlink.operators.health import HealthSettings

__all__ = [
    "ExecutorSettings",
    "IsolationSettings",
    "ModelFactory",
    "ModelFactoryError",
    "frame_callable",
    "import_hint",
]


def import_hint(target: str, exc: BaseException) -> str:
    """Where Python looked, when the module a config names is not found at all (not a module
    it imports in turn): a new user ran the worker from another directory and read only "No
    module named 'mymodels'" (stop 45's audit)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return ""
    module = target.partition(":")[0]
    if module != exc.name and not module.startswith(f"{exc.name}."):
        return f" (a module that {module!r} imports is missing: install it)"
    return (
        f" (Python looked in the working directory {os.getcwd()} and on PYTHONPATH: run from "
        f"the directory that holds {exc.name.split('.')[0]!r}, or add it to PYTHONPATH)"
    )


class ModelFactoryError(ValueError):
    """A model factory cannot be imported or does not return a callable model."""


def frame_callable(model: Any) -> Any:
    """``model`` as a frame -> output callable: a ``torch.nn.Module`` is wrapped (eval mode, no
    grad, numpy in and out), anything else is returned as it is. Both a worker's thread and an
    isolated model's child build through here, so a module behaves the same in either.

    The module receives the frame as a tensor of the frame's dtype (uint8 pixels); scaling and
    layout belong in its ``forward``, where the user can see them. torch is only looked up, not
    imported: a model that is a module has loaded it already.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(model, torch.nn.Module):
        return model
    model.eval()

    def call(frame: Any) -> Any:
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(frame)))
        return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out

    call.__name__ = f"{type(model).__name__}_callable"
    return call


@dataclass(frozen=True, slots=True)
class ModelFactory:
    """Builds a model: ``target(**args)`` where target is ``"package.module:callable"`` or a
    picklable callable (a module-level function or class, a ``functools.partial`` of one).

    An import path is what a config gives and what a child process can always rebuild; a
    callable must be importable by the child under the same name (no lambdas, no closures).
    """

    target: str | Callable[..., Any]
    args: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Callable[[Any], Any]) -> ModelFactory:
        """A factory returning ``model`` itself: the model object is pickled to each child
        (for an already built, picklable model such as a ``torch.nn.Module``)."""
        return cls(_itself, {"model": model})

    def build(self) -> Callable[[Any], Any]:
        factory = self.resolve()
        model = frame_callable(factory(**dict(self.args)))
        if not callable(model):
            raise ModelFactoryError(
                f"factory {self.describe()} returned {type(model).__name__}, not a callable "
                "mapping a frame to an output"
            )
        return model

    def resolve(self) -> Callable[..., Any]:
        if not isinstance(self.target, str):
            return self.target
        if ":" not in self.target:
            raise ModelFactoryError(
                f"import path {self.target!r} must look like 'package.module:callable'"
            )
        try:
            factory = pkgutil.resolve_name(self.target)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ModelFactoryError(
                f"cannot import {self.target!r}: {exc}{import_hint(self.target, exc)}"
            ) from exc
        if not callable(factory):
            raise ModelFactoryError(f"{self.target!r} is not callable")
        return factory

    def describe(self) -> str:
        if isinstance(self.target, str):
            return repr(self.target)
        return getattr(self.target, "__qualname__", repr(self.target))


@dataclass(frozen=True, slots=True, kw_only=True)
class IsolationSettings:
    """Run a model in child processes, so a leak, a segfault or a hang costs a restart of that
    model's process instead of the worker. See :mod:`mlink.operators.isolation`."""

    processes: int = 1
    """Child processes for this model; each runs one call at a time."""
    start_method: Literal["spawn", "forkserver"] = "spawn"
    """Never ``fork``: forking after torch, faust or asyncio started threads is unsafe.
    ``forkserver`` restarts faster (the server has already imported everything)."""
    start_timeout_s: float = 120.0
    """How long a child may take to import and build its model before it counts as failed."""
    max_rss_mb: float | None = None
    """Kill and restart a child whose resident memory exceeds this (checked after every call
    by the child and every ``rss_poll_s`` by the parent); None = no cap."""
    rss_poll_s: float = 0.5
    backoff_initial_s: float = 0.5
    """Delay before the first restart after a crash; doubles on each crash in a row."""
    backoff_max_s: float = 30.0
    backoff_reset_s: float = 60.0
    """A child that served this long without dying resets the backoff to its initial value."""
    torch_threads: int | None = None
    """Set ``torch.set_num_threads`` in the child before building (if torch is installed), and
    keep it after ``library_threads``."""
    library_threads: int | None = 1
    """OpenCV's and torch's intra-op threads in the child once the model is built (None: the
    libraries' defaults). A worker sets it to its own ``Settings.model_threads``, so an isolated
    model is priced like one on a thread (:mod:`mlink.operators.library_threads`)."""

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"IsolationSettings.processes must be >= 1, got {self.processes}")
        if self.start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"IsolationSettings.start_method must be 'spawn' or 'forkserver', got "
                f"{self.start_method!r} ('fork' is unsafe after threads have started)"
            )
        if self.max_rss_mb is not None and self.max_rss_mb <= 0:
            raise ValueError(f"IsolationSettings.max_rss_mb must be > 0, got {self.max_rss_mb}")
        positive = ("start_timeout_s", "rss_poll_s", "backoff_initial_s", "backoff_max_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"IsolationSettings.{name} must be > 0, got {getattr(self, name)}")
        if self.backoff_reset_s < 0:
            raise ValueError("IsolationSettings.backoff_reset_s must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorSettings:
    """How one model is executed by a worker."""

    timeout_s: float = 10.0
    """Longest a single call (one frame, or one batch for a batch model) may take; longer, and
    the call's frames get an error outcome and the model is reported unhealthy."""
    health: HealthSettings = field(default_factory=HealthSettings)
    isolation: IsolationSettings | None = None
    """None runs the model on a thread of the worker; settings run it in child processes."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"ExecutorSettings.timeout_s must be > 0, got {self.timeout_s}")


def _itself(model: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return model
