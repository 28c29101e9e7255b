"""What the temporal methods can do with an inactive model, and their settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlink.linkstore.training import TrainConfig

__all__ = ["REUSE", "SELF", "Policy", "TemporalConfig"]

SELF = "<self>"  # the temporal link that sees only the target's own last output
REUSE = "<reuse>"  # no link: the target's last real output, as is


@dataclass(frozen=True, slots=True)
class TemporalConfig:
    """Settings of the temporal methods.

    ``links`` trains the plain links (the paper's recipe, as :func:`~mlink.eval.experiment.
    train_workload`); ``temporal_links`` trains the temporal links, once per fold.
    """

    links: TrainConfig = field(default_factory=TrainConfig)
    temporal_links: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=50))
    max_lag: int = 7  # temporal links see 1..max_lag frames since the refresh; k <= max_lag + 1
    reuse_max_period: int = 16  # longest period k of periodic reuse
    folds: int = 3  # contiguous time blocks per stream for cross-fitting temporal links
    quantiles: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)  # trigger thresholds
    bucket: float = 3.0  # most runs a target may save up for a burst of triggers
    max_subsets: int = 4096  # try every active set that fits up to this many, else greedy
    grid: int = 2000  # knapsack resolution in cost units (plans never exceed the budget)

    def __post_init__(self) -> None:
        if self.max_lag < 1 or self.reuse_max_period < 1 or self.folds < 2:
            raise ValueError("TemporalConfig: max_lag, reuse_max_period >= 1 and folds >= 2")


@dataclass(frozen=True, slots=True)
class Policy:
    """What one inactive model does between its real runs.

    ``kind``: ``"prior"`` (never runs, outputs its prior), ``"link"`` (never runs, MLink's plain
    links from the active set), ``"periodic"`` (runs every ``period`` frames), ``"trigger"``
    (runs when ``signal`` exceeds ``threshold`` or after ``period`` frames, at most ``rate`` runs
    per frame on average). Between runs ``mode`` synthesizes: :data:`REUSE`, :data:`SELF` or the
    name of the active source of a temporal link. ``signal`` is ``("raw", model)`` -- the change
    of an active model's output since the target's last run -- or ``("link", source)`` -- the
    change the temporal link from ``source`` predicts for the target.
    """

    kind: str
    period: int = 0
    mode: str = REUSE
    signal: tuple[str, str] | None = None
    threshold: float = 0.0
    rate: float = 0.0
    cost: float = 0.0  # expected ms per frame (model runs + links + signal)
    estimate: float = 0.0  # training (out-of-fold) agreement
    requires: frozenset[str] = frozenset()

    def describe(self) -> str:
        how = "reuse" if self.mode == REUSE else f"temporal link from {self.mode}"
        if self.kind == "prior":
            return "prior"
        if self.kind == "link":
            return "plain links"
        if self.kind == "periodic":
            return "always runs" if self.period == 1 else f"every {self.period}, {how}"
        kind, src = self.signal or ("", "")
        sig = f"change of {src}" if kind == "raw" else f"change predicted by link from {src}"
        return f"on {sig} > {self.threshold:.3g} (rate {self.rate:.2f}), {how}"
