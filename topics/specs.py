"""Output specs: what a black-box model emits, and how that output becomes a link tensor.

A link never sees a model's internals, only its outputs, so everything MLink knows about a model is
its output spec. The spec does three jobs: it validates what a model produced (so a broken model is
caught at the operator, not deep inside a link), it turns an output into a fixed-length vector a
link can consume (``encode``), and it turns a link's raw prediction back into an output of the same
shape the real model would have produced (``decode``).

Three kinds cover the models of the paper:

- :class:`VectorSpec` -- a fixed-length vector: class probabilities (``softmax``), multi-label
  probabilities (``sigmoid``), regression values (``linear``) or integer counts (``count``).
- :class:`BoxesSpec` -- a detector: ``(n, 5)`` rows of ``x1, y1, x2, y2, score`` in normalised
  ``[0, 1]`` image coordinates. Links see it as the count plus the top-k boxes, zero padded.
- :class:`SequenceSpec` -- a variable-length token sequence (captions, transcripts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np

Task = Literal["softmax", "sigmoid", "linear", "count"]
TASKS: tuple[str, ...] = ("softmax", "sigmoid", "linear", "count")


class SpecError(ValueError):
    """A model output does not match its spec, or a spec itself is malformed."""


def _as_array(output: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(output)
    except Exception as exc:  # numpy raises many kinds for ragged input
        raise SpecError(f"{what}: cannot be read as an array ({exc})") from exc


@dataclass(frozen=True, slots=True)
class VectorSpec:
    """A fixed-length vector output.

    ``tolerance`` is how far a synthesized ``linear``/``count`` value may be from the real one and
    still agree (the paper counts a count as correct when ``|error| < 0.5``).
    """

    size: int
    task: Task
    max_count: int | None = None
    tolerance: float = 0.5
    labels: tuple[str, ...] | None = None

    kind: ClassVar[str] = "vector"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise SpecError(f"vector spec: task {self.task!r} is unknown; use one of {TASKS}")
        if not isinstance(self.size, int) or self.size < 1:
            raise SpecError(f"vector spec: size must be a positive int, got {self.size!r}")
        if self.task == "count" and (self.max_count is None or self.max_count < 1):
            raise SpecError("vector spec: task 'count' needs max_count >= 1 (the largest count)")
        if self.task == "softmax" and self.size < 2:
            raise SpecError("vector spec: a softmax output needs size >= 2 classes")
        if self.labels is not None and len(self.labels) != self.size:
            raise SpecError(
                f"vector spec: {len(self.labels)} labels given for size {self.size}; "
                "give one label per element or none"
            )
        if self.tolerance <= 0:
            raise SpecError(f"vector spec: tolerance must be > 0, got {self.tolerance}")

    @property
    def link_dim(self) -> int:
        return self.size

    @property
    def link_task(self) -> Task:
        return self.task

    def validate(self, output: Any, model: str = "output") -> np.ndarray:
        arr = _as_array(output, model)
        if arr.shape == () and self.size == 1:
            arr = arr.reshape(1)
        if arr.shape != (self.size,):
            raise SpecError(f"{model}: expected shape ({self.size},), got {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise SpecError(f"{model}: expected numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise SpecError(f"{model}: output contains NaN or infinity: {arr.tolist()}")
        if self.task in ("softmax", "sigmoid") and (arr.min() < -1e-4 or arr.max() > 1 + 1e-4):
            raise SpecError(f"{model}: {self.task} probabilities must lie in [0, 1]")
        if self.task == "softmax" and abs(float(arr.sum()) - 1.0) > 1e-3:
            raise SpecError(
                f"{model}: softmax probabilities sum to {arr.sum():.4f}, not 1; "
                "emit probabilities (or a one-hot vector), not logits"
            )
        if self.task == "count":
            if arr.min() < 0 or np.any(arr != np.round(arr)):
                raise SpecError(f"{model}: counts must be non-negative integers, got {arr}")
            if arr.max() > self.max_count:
                raise SpecError(f"{model}: count {arr.max()} exceeds max_count {self.max_count}")
        return arr

    def encode(self, output: Any) -> np.ndarray:
        return self.validate(output)

    def decode(self, vector: np.ndarray) -> np.ndarray:
        """Turn a link prediction into what the real model would emit."""
        vec = np.asarray(vector, dtype=np.float32).reshape(self.size)
        if self.task == "count":
            return np.clip(np.rint(vec), 0, self.max_count).astype(np.float32)
        if self.task in ("softmax", "sigmoid"):
            return np.clip(vec, 0.0, 1.0)
        return vec

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        if d["labels"] is not None:
            d["labels"] = list(d["labels"])
        return d


@dataclass(frozen=True, slots=True)
class BoxesSpec:
    """A detector's boxes: rows of ``x1, y1, x2, y2, score``, coordinates normalised to [0, 1].

    Links see ``[count, top-k boxes by score]`` so that a variable number of detections becomes a
    fixed-length vector; ``max_boxes`` (k) bounds what a synthesized output can contain.
    """

    max_boxes: int = 8
    max_count: int = 64

    kind: ClassVar[str] = "boxes"

    def __post_init__(self) -> None:
        if self.max_boxes < 1 or self.max_count < 1:
            raise SpecError("boxes spec: max_boxes and max_count must be >= 1")

    @property
    def link_dim(self) -> int:
        return 1 + 5 * self.max_boxes

    @property
    def link_task(self) -> Task:
        return "linear"

    def validate(self, output: Any, model: str = "output") -> np.ndarray:
        arr = _as_array(output, model)
        if arr.size == 0:
            return np.zeros((0, 5), dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != 5:
            raise SpecError(
                f"{model}: boxes must have shape (n, 5) [x1,y1,x2,y2,score], got {arr.shape}"
            )
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise SpecError(f"{model}: boxes contain NaN or infinity")
        if arr[:, :4].min() < -1e-4 or arr[:, :4].max() > 1 + 1e-4:
            raise SpecError(
                f"{model}: box coordinates must be normalised to [0, 1] (divide by W, H)"
            )
        if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
            raise SpecError(f"{model}: boxes need x2 >= x1 and y2 >= y1")
        if arr.shape[0] > self.max_count:
            raise SpecError(f"{model}: {arr.shape[0]} boxes exceed max_count {self.max_count}")
        return arr

    def encode(self, output: Any) -> np.ndarray:
        boxes = self.validate(output)
        vec = np.zeros(self.link_dim, dtype=np.float32)
        vec[0] = boxes.shape[0]
        if boxes.shape[0]:
            top = boxes[np.argsort(-boxes[:, 4], kind="stable")][: self.max_boxes]
            vec[1 : 1 + top.size] = top.reshape(-1)
        return vec

    def decode(self, vector: np.ndarray) -> np.ndarray:
        vec = np.asarray(vector, dtype=np.float32).reshape(self.link_dim)
        n = int(np.clip(np.rint(vec[0]), 0, self.max_boxes))
        boxes = vec[1:].reshape(self.max_boxes, 5)[:n].copy()
        boxes[:, :5] = np.clip(boxes[:, :5], 0.0, 1.0)
        x1 = np.minimum(boxes[:, 0], boxes[:, 2])
        x2 = np.maximum(boxes[:, 0], boxes[:, 2])
        y1 = np.minimum(boxes[:, 1], boxes[:, 3])
        y2 = np.maximum(boxes[:, 1], boxes[:, 3])
        boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = x1, y1, x2, y2
        return boxes

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_boxes": self.max_boxes, "max_count": self.max_count}


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    """A variable-length token sequence with ids in ``[0, vocab_size)``.

    Links pad sequences to ``max_length`` with ``pad_id == vocab_size`` (an id no real token uses).
    """

    vocab_size: int
    max_length: int

    kind: ClassVar[str] = "sequence"

    def __post_init__(self) -> None:
        if self.vocab_size < 1 or self.max_length < 1:
            raise SpecError("sequence spec: vocab_size and max_length must be >= 1")

    @property
    def pad_id(self) -> int:
        return self.vocab_size

    @property
    def link_dim(self) -> int:
        return self.max_length

    @property
    def link_task(self) -> Literal["sequence"]:
        return "sequence"

    def validate(self, output: Any, model: str = "output") -> np.ndarray:
        arr = _as_array(output, model)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.ndim != 1:
            raise SpecError(f"{model}: a token sequence must be 1-D, got shape {arr.shape}")
        integral = np.issubdtype(arr.dtype, np.integer) or (
            np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))
        )
        if not integral:
            raise SpecError(f"{model}: token ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.shape[0] > self.max_length:
            raise SpecError(f"{model}: length {arr.shape[0]} exceeds max_length {self.max_length}")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise SpecError(f"{model}: token ids must lie in [0, {self.vocab_size})")
        return arr

    def encode(self, output: Any) -> np.ndarray:
        seq = self.validate(output)
        vec = np.full(self.max_length, self.pad_id, dtype=np.int64)
        vec[: seq.shape[0]] = seq
        return vec

    def decode(self, vector: np.ndarray) -> np.ndarray:
        ids = np.asarray(vector, dtype=np.int64).reshape(-1)
        stop = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        return ids[: stop[0]] if stop.size else ids[: self.max_length]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "max_length": self.max_length}


OutputSpec: TypeAlias = VectorSpec | BoxesSpec | SequenceSpec
_KINDS: dict[str, type] = {"vector": VectorSpec, "boxes": BoxesSpec, "sequence": SequenceSpec}


def spec_from_dict(data: dict[str, Any]) -> OutputSpec:
    """Build a spec from its JSON form (``{"kind": "vector", "size": 10, "task": "softmax"}``)."""
    if not isinstance(data, dict):
        raise SpecError(f"output spec must be a mapping, got {type(data).__name__}")
    fields = dict(data)
    kind = fields.pop("kind", "vector")
    cls = _KINDS.get(kind)
    if cls is None:
        raise SpecError(f"output spec kind {kind!r} is unknown; use one of {sorted(_KINDS)}")
    if kind == "vector" and fields.get("labels") is not None:
        fields["labels"] = tuple(fields["labels"])
    try:
        return cls(**fields)
    except TypeError as exc:
        raise SpecError(f"{kind} spec: {exc}") from exc


def encode_batch(spec: OutputSpec, outputs: Sequence[Any], trusted: bool = False) -> np.ndarray:
    """Stack many outputs into the ``(n, link_dim)`` matrix links train and run on.

    ``trusted`` outputs were validated already: vectors are then stacked without re-checking.
    """
    if trusted and isinstance(spec, VectorSpec):
        return np.asarray(outputs, dtype=np.float32).reshape(len(outputs), spec.size)
    dtype = np.int64 if isinstance(spec, SequenceSpec) else np.float32
    out = np.empty((len(outputs), spec.link_dim), dtype=dtype)
    for i, output in enumerate(outputs):
        out[i] = spec.encode(output)
    return out
