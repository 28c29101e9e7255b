"""The link-bundle format: what a linkstore version holds and how it becomes a ready link set.

A version is self-contained so that any worker can plan and synthesize from it alone: the links,
ensembles and priors (:meth:`LinkSet.to_bundle`), the selection oracle the controller scores
active sets on (cross-fitted: every fold's link set and the outputs it did not see, see
:mod:`mlink.linkstore.crossfit`; older versions carry held-out validation outputs, ``val/``),
and the model, link and ensemble costs measured while training. The trainer writes it with
:func:`make_bundle`; the controller and the link operators read it with :func:`load_bundle`,
cached per process because a version never changes once written.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mlink.linkstore.crossfit import CrossFit, oracle_from_bundle
from mlink.linkstore.linkcosts import synthesis_costs
from mlink.linkstore.linkset import AgreementOracle, LinkSet, decode_rows
from mlink.linkstore.store import LinkStore, StoreError
from mlink.linkstore.streamfit import Curve, StreamFit
from mlink.linkstore.streamlinks import StreamLinks
from mlink.topics.specs import OutputSpec

__all__ = ["LoadedLinks", "load_bundle", "make_bundle", "save_bundle", "validation_outputs"]


@dataclass(slots=True)
class LoadedLinks:
    """A linkstore version ready for selection and synthesis."""

    version: int
    linkset: LinkSet
    oracle: AgreementOracle
    model_costs: dict[str, dict[str, float]]
    link_costs: dict[tuple[str, str], dict[str, float]]
    n_samples: int
    ensemble_costs: dict[str, dict[str, float]]
    stream: StreamLinks | None = None
    """Stream synthesis (memory, detector links, priors) when the version was fitted for it."""
    curves: dict[str, list[Curve]] = field(default_factory=dict)
    """Per model, the estimated agreement of each synthesis mode by frames since its last run."""
    sha256: str = ""
    """The digest of the version's weights: a plan names it, so a store that holds other
    weights under the same number is noticed (:meth:`LinkStore.holds`)."""


def make_bundle(
    fit: CrossFit,
    outputs: Mapping[str, Sequence[Any]],
    model_costs: Mapping[str, Mapping[str, float]],
    stream: StreamFit | None = None,
    fill: int = 1,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The tensors and metadata of a version: the link set that runs, the oracle plans are
    scored on (``fit`` was cross-fitted on ``outputs``, the samples it was trained on), the
    measured model, link and ensemble costs (synthesis timed on ``fill`` frames a call, as the
    model costs were measured: :func:`~mlink.linkstore.linkcosts.synthesis_costs`), and
    ``stream``'s heads, priors and curves."""
    linkset = fit.linkset
    tensors, meta = linkset.to_bundle()
    parts, oracle_meta = fit.bundle_parts(outputs)
    tensors.update(parts)
    meta["selection_oracle"] = oracle_meta
    meta["measured_costs"] = {m: dict(c) for m, c in model_costs.items()}
    link_costs, ensemble_costs = synthesis_costs(linkset, fill=fill)
    meta["synthesis_fill"] = int(fill)
    meta["link_costs"] = [{"source": s, "target": t, **c} for (s, t), c in link_costs.items()]
    meta["ensemble_costs"] = ensemble_costs
    meta["n_samples"] = len(next(iter(outputs.values()))) if outputs else 0
    if stream is not None:
        meta["stream"] = stream.to_meta()
    return tensors, meta


def save_bundle(store: LinkStore, *args: Any, **kwargs: Any) -> int:
    """:func:`make_bundle` saved (and promoted) as a new version of ``store``."""
    tensors, meta = make_bundle(*args, **kwargs)
    return store.save(tensors, meta)


def validation_outputs(
    specs: Mapping[str, OutputSpec], tensors: Mapping[str, Mapping[str, torch.Tensor]]
) -> dict[str, list[Any]]:
    """The held-out outputs a bundle carries, back in model-output form."""
    return {
        m: list(decode_rows(spec, tensors[f"val/{m}"]["encoded"].numpy()))
        for m, spec in specs.items()
    }


_lock = threading.Lock()  # guards the dicts below only: a load runs outside it
_loading: dict[tuple[str, int], threading.Lock] = {}  # one load per version in flight
_loaded: OrderedDict[tuple[str, int], LoadedLinks] = OrderedDict()
_bad: OrderedDict[tuple[str, int], tuple[float, StoreError]] = OrderedDict()
_CACHED = 8
#: Failed versions remembered, most recent first out of mind: a frame's ``link_version`` is
#: whatever its record says, so distinct bad versions must not pile up without bound.
_BAD_KEPT = 256
#: After this long a failed version is read again: "missing" can mean "not visible yet" (a
#: worker that hears of a version before its files reach the shared store).
BAD_RETRY_S = 30.0


def _load(store: LinkStore, version: int) -> LoadedLinks:
    bundle = store.load(version)
    meta = bundle.meta.meta
    own = {n: v for n, v in bundle.tensors.items() if not n.startswith("fold")}
    linkset = LinkSet.from_bundle(own, meta)
    if "selection_oracle" in meta:
        oracle: Any = oracle_from_bundle(bundle.tensors, meta["selection_oracle"])
    else:  # a version from before cross-fitting: its held-out validation rows
        oracle = linkset.agreement_oracle(validation_outputs(linkset.specs, bundle.tensors))
    link_costs = {
        (c["source"], c["target"]): {k: v for k, v in c.items() if k not in ("source", "target")}
        for c in meta.get("link_costs", [])
    }
    stream, curves = None, {}
    if "stream" in meta:
        stream = StreamLinks.from_meta(linkset.specs, meta["stream"], linkset)
        curves = StreamFit.curves_from_meta(meta["stream"])
    return LoadedLinks(
        version,
        linkset,
        oracle,
        meta.get("measured_costs", {}),
        link_costs,
        int(meta.get("n_samples", 0)),
        {t: dict(c) for t, c in meta.get("ensemble_costs", {}).items()},
        stream,
        curves,
        bundle.meta.sha256,
    )


def load_bundle(store: LinkStore, version: int) -> LoadedLinks:
    """Load a version (verified by the store), cached per process: versions are immutable.

    Raises :class:`~mlink.linkstore.store.StoreError` when the version is missing, corrupt or
    does not form a link set. A version that failed is remembered for ``BAD_RETRY_S``: it is
    not re-read and re-hashed for every frame that names it, and one that was only missing
    becomes usable once its files are there.
    """
    key = (str(store.root), int(version))
    with _lock:
        cached = _cached(key)
        if cached is not None:
            return cached
        gate = _loading.setdefault(key, threading.Lock())
    # One load per version even when the controller and an agent race for it, and a slow read
    # of one version never holds up a lookup of another (the frame path looks up on its loop).
    with gate:
        with _lock:
            cached = _cached(key)
        if cached is not None:
            return cached
        try:
            links = _load(store, version)
        except Exception as exc:  # whatever a read or a decode raises: the version is unusable
            error = (
                exc
                if isinstance(exc, StoreError)
                else StoreError(
                    f"link version {version} in {store.root} is not a usable link set: {exc!r}"
                )
            )
            with _lock:
                _remember_bad(key, error)
                _loading.pop(key, None)
            if error is exc:
                raise
            raise error from exc
        with _lock:
            _bad.pop(key, None)
            _loaded[key] = links
            while len(_loaded) > _CACHED:
                _loaded.popitem(last=False)
            _loading.pop(key, None)
        return links


def _cached(key: tuple[str, int]) -> LoadedLinks | None:
    """The loaded version, or None to load it; raises a failure younger than BAD_RETRY_S.
    Call with ``_lock`` held."""
    if key in _loaded:
        _loaded.move_to_end(key)
        return _loaded[key]
    failed = _bad.get(key)
    if failed is not None and time.monotonic() - failed[0] < BAD_RETRY_S:
        raise failed[1]
    return None


def _remember_bad(key: tuple[str, int], error: StoreError) -> None:
    _bad[key] = (time.monotonic(), error)
    _bad.move_to_end(key)
    while len(_bad) > _BAD_KEPT:
        _bad.popitem(last=False)
