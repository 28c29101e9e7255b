"""The digits workload: seven real, strongly related black-box classifiers on real images.

scikit-learn ships 1,797 real 8x8 handwritten digit images. The first half (in file order) trains
seven classifiers of different architectures and label sets, once; from then on they are black
boxes. The second half is the stream they run on. Their tasks overlap (a digit implies its parity,
its loops, whether it is >= 5...), which is the case model links are made for; the video workload
is the honest hard case.

Frames are ``uint8`` 8x8 images (pixel values 0..16 scaled to 0..255) so they travel as PNG like
any other frame. Everything here ships in the scikit-learn wheel; nothing is downloaded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlink.eval.outputs import DEFAULT_CACHE, collect_workload
from mlink.eval.workload import Workload
from mlink.topics.specs import OutputSpec, VectorSpec

#: Bumped whenever a model's definition changes what it outputs, so cached outputs are recomputed.
VERSION = 2
PRIMES = {2, 3, 5, 7}
LOOPS = {0: 1, 4: 1, 6: 1, 8: 2, 9: 1}
CURVED = {0, 2, 3, 5, 6, 8, 9}


@dataclass(frozen=True, slots=True)
class DigitsModel:
    """How one black box is built: its label function, estimator and output spec."""

    name: str
    spec: OutputSpec
    description: str


MODELS: dict[str, DigitsModel] = {
    m.name: m
    for m in [
        DigitsModel("digit_svc", VectorSpec(10, "softmax"), "RBF SVM, digit 0-9"),
        DigitsModel("digit_mlp", VectorSpec(10, "softmax"), "MLP 128-64, digit 0-9"),
        DigitsModel("parity_logreg", VectorSpec(2, "softmax"), "logistic regression, odd/even"),
        DigitsModel("ge5_forest", VectorSpec(2, "softmax"), "random forest (100 trees), >= 5"),
        DigitsModel("loops_knn", VectorSpec(3, "softmax"), "k-NN, closed loops 0/1/2"),
        DigitsModel(
            "attrs_mlp", VectorSpec(4, "sigmoid"), "MLP, multi-label prime/even/loop/curved"
        ),
        DigitsModel(
            "value_gbr", VectorSpec(1, "linear"), "gradient boosting regressor, digit value"
        ),
    ]
}


@functools.cache
def _data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def split() -> tuple[slice, slice]:
    """First half trains the black boxes, second half is the stream (disjoint by construction)."""
    n = len(_data()[1])
    return slice(0, n // 2), slice(n // 2, n)


def _labels(name: str, digits: np.ndarray) -> np.ndarray:
    if name.startswith("digit") or name == "value_gbr":
        return digits
    if name == "parity_logreg":
        return digits % 2
    if name == "ge5_forest":
        return (digits >= 5).astype(np.int64)
    if name == "loops_knn":
        return np.array([LOOPS.get(int(d), 0) for d in digits])
    if name == "attrs_mlp":
        return np.array(
            [[d in PRIMES, d % 2 == 0, d in LOOPS, d in CURVED] for d in digits.tolist()],
            dtype=np.int64,
        )
    raise KeyError(name)


def _estimator(name: str) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    return {
        "digit_svc": lambda: CalibratedClassifierCV(SVC(gamma="scale"), ensemble=False),
        "digit_mlp": lambda: MLPClassifier((128, 64), max_iter=300, random_state=0),
        "parity_logreg": lambda: LogisticRegression(max_iter=2000),
        "ge5_forest": lambda: RandomForestClassifier(100, random_state=0),
        "loops_knn": lambda: KNeighborsClassifier(7),
        "attrs_mlp": lambda: MLPClassifier((64,), max_iter=2000, random_state=0),
        "value_gbr": lambda: GradientBoostingRegressor(n_estimators=200, random_state=0),
    }[name]()


@functools.cache
def _fitted(name: str) -> Any:
    images, digits = _data()
    train = split()[0]
    estimator = _estimator(name)
    estimator.fit(images[train].reshape(-1, 64) / 255.0, _labels(name, digits[train]))
    return estimator


class Predictor:
    """One fitted black box: maps an 8x8 ``uint8`` frame (or a batch ``(n, 8, 8)``) to its output.

    A plain class rather than a closure so it pickles: the output cache measures a model's memory
    by loading it into a fresh interpreter.
    """

    def __init__(self, name: str, estimator: Any, spec: VectorSpec) -> None:
        self.name, self.estimator, self.spec = name, estimator, spec
        self.model_key = f"digits:{name}:v{VERSION}"  # output cache key

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        batch = frame.ndim == 3
        x = frame.reshape(-1, 64).astype(np.float64) / 255.0
        if self.spec.task == "linear":
            out = self.estimator.predict(x).reshape(-1, 1)
        else:  # softmax probabilities; for the multi-label MLP, per-label sigmoids
            out = self.estimator.predict_proba(x)
        out = out.astype(np.float32)
        return out if batch else out[0]


def model(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Model factory for pipeline configs: ``factory: mlink.eval.workloads.digits:model``.

    Returns a black box mapping one 8x8 ``uint8`` frame to its output. It also accepts a batch
    ``(n, 8, 8)`` and then returns ``(n, ...)``, so operators can batch it.
    """
    if name not in MODELS:
        raise ValueError(f"digits model {name!r} is unknown; choose one of {sorted(MODELS)}")
    return Predictor(name, _fitted(name), MODELS[name].spec)


def frames(limit: int | None = None) -> Iterator[np.ndarray]:
    """Frame source for pipeline configs: the stream half of the images, in file order.

    The images are independent samples, but the file order is not random: 271 of the 898 steps
    from one image to the next are a label counting up by one (mod 10), which favours methods
    that reuse the last output. ``independent_frames`` tells ``mlink bench`` so, and it shuffles
    the stream by default (``--order``).
    """
    images, _ = _data()
    stream = images[split()[1]]
    yield from stream[:limit] if limit is not None else stream


#: Frames are independent samples in storage order, not a time series (see :func:`frames`).
frames.independent_frames = True  # type: ignore[attr-defined]


def specs() -> dict[str, OutputSpec]:
    return {name: m.spec for name, m in MODELS.items()}


def workload(cache_dir: Path | None = DEFAULT_CACHE, progress: bool = True) -> Workload:
    """Every digits model's outputs on the stream with measured costs (cached; see
    :func:`mlink.eval.outputs.collect_workload`)."""
    models = {name: (model(name), m.spec) for name, m in MODELS.items()}
    stream = [("digits", frame) for frame in frames()]
    return collect_workload("digits", models, stream, cache_dir=cache_dir, progress=progress)
