"""A LinkSet: every pairwise link and one ensemble per target for a set of black-box models.

This is the object the rest of MLink-stream works with. The trainer builds it from pairs of real
outputs (never ground truth), the selector asks it how well each target can be synthesized from any
active set, the link operator asks it to synthesize, and the linkstore saves it as tensors + JSON.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mlink.linkstore.ensemble import EnsembleKind, build_ensemble, train_ensemble
from mlink.linkstore.fast import FastTarget
from mlink.linkstore.links import (
    VecToVecLink,
    activate,
    build_link,
    decode_tokens,
    is_sequence_link,
)
from mlink.linkstore.oracle import AgreementOracle
from mlink.linkstore.rows import decode_rows, prior_row
from mlink.linkstore.training import (
    TrainConfig,
    split_indices,
    torch_threads,
    train_single,
    train_stacked,
)
from mlink.topics.specs import (
    OutputSpec,
    SequenceSpec,
    encode_batch,
    spec_from_dict,
)

__all__ = [
    "AgreementOracle",
    "LinkSet",
    "check_model_names",
    "decode_rows",
    "prior_row",
    "specs_from_meta",
]

MODEL_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
Pair = tuple[str, str]


def specs_from_meta(meta: Mapping[str, Any]) -> dict[str, OutputSpec]:
    """The models a link bundle was trained for, and their outputs, from its metadata."""
    return {m: spec_from_dict(d) for m, d in meta["models"].items()}


def check_model_names(names: Sequence[str]) -> None:
    for name in names:
        if not MODEL_NAME.match(name):
            raise ValueError(
                f"model name {name!r} is not allowed: use letters, digits, '_', '.', '-' only"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {list(names)}")


class LinkSet:
    """Trained links ``(source, target)``, ensembles per target and no-source priors."""

    def __init__(
        self,
        specs: Mapping[str, OutputSpec],
        links: Mapping[Pair, nn.Module],
        ensembles: Mapping[str, nn.Module],
        priors: Mapping[str, np.ndarray],
        link_scores: Mapping[Pair, float],
        config: TrainConfig,
        ensemble_kind: EnsembleKind = "weighted",
        n_train: int = 0,
    ) -> None:
        self.specs = dict(specs)
        self.links = dict(links)
        self.ensembles = dict(ensembles)
        self.priors = {k: np.asarray(v) for k, v in priors.items()}
        self.link_scores = dict(link_scores)
        self.config = config
        self.ensemble_kind = ensemble_kind
        self.n_train = n_train
        self.val_index = np.zeros(0, dtype=np.int64)  # held-out training rows, set by train()
        self._fast: dict[str, FastTarget | None] = {}

    @property
    def models(self) -> list[str]:
        return list(self.specs)

    def sources_of(self, target: str) -> list[str]:
        return [m for m in self.specs if m != target and (m, target) in self.links]

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        specs: Mapping[str, OutputSpec],
        outputs: Mapping[str, Sequence[Any]],
        config: TrainConfig | None = None,
        ensemble: EnsembleKind = "weighted",
        progress: bool = True,
        targets: Sequence[str] | None = None,
    ) -> LinkSet:
        """Train all pairwise links and the ensembles from aligned real outputs of every model.

        ``outputs[m][i]`` is model ``m``'s output on input ``i``; all models must cover the same
        inputs (probe frames, or the warm-up phase where every model runs). ``targets`` limits
        training to links *into* those models (others can then only be executed, never
        synthesized).
        """
        with torch_threads(1):
            return cls._train(specs, outputs, config or TrainConfig(), ensemble, progress, targets)

    @classmethod
    def _train(
        cls,
        specs: Mapping[str, OutputSpec],
        outputs: Mapping[str, Sequence[Any]],
        config: TrainConfig,
        ensemble: EnsembleKind,
        progress: bool,
        targets: Sequence[str] | None,
    ) -> LinkSet:
        names = list(specs)
        check_model_names(names)
        if len(names) < 2:
            raise ValueError("links need at least two models")
        missing = [m for m in names if m not in outputs]
        if missing:
            raise ValueError(f"no training outputs for models {missing}")
        counts = {m: len(outputs[m]) for m in names}
        if len(set(counts.values())) != 1:
            raise ValueError(f"models must have outputs on the same inputs, got counts {counts}")
        n = counts[names[0]]
        enc = {m: encode_batch(specs[m], list(outputs[m])) for m in names}
        train_idx, val_idx = split_indices(n, config.val_fraction, config.seed)
        links: dict[Pair, nn.Module] = {}
        scores: dict[Pair, float] = {}
        unknown = sorted(set(targets or ()) - set(names))
        if unknown:
            raise ValueError(f"targets {unknown} are not among the models {names}")
        groups = _training_groups(specs, targets or names)
        bar = tqdm(
            total=config.epochs * sum(len(a) + len(b) for a, b in groups.values()),
            desc="training links",
            unit="epoch",
            disable=not progress,
            leave=False,
        )
        tick = lambda: bar.update(1)  # noqa: E731
        for target, (stacked, single) in groups.items():
            spec_t = specs[target]
            if stacked:
                model, report = train_stacked(
                    [enc[s] for s in stacked],
                    enc[target],
                    spec_t.link_task,
                    train_idx,
                    val_idx,
                    config,
                    on_epoch=functools.partial(bar.update, len(stacked)),
                )
                for i, source in enumerate(stacked):
                    links[(source, target)] = model.extract(i)
                    scores[(source, target)] = report.val_score[i]
            for source in single:
                link = build_link(
                    specs[source], spec_t, config.hidden_mult, config.dropout, config.min_hidden
                )
                link, report = train_single(
                    link,
                    enc[source],
                    enc[target],
                    spec_t.link_task,
                    train_idx,
                    val_idx,
                    config,
                    on_epoch=tick,
                )
                links[(source, target)] = link
                scores[(source, target)] = report.val_score[0]
        bar.close()
        priors = {m: prior_row(specs[m], enc[m][train_idx]) for m in names}
        result = cls(specs, links, {}, priors, scores, config, ensemble, n)
        result.val_index = val_idx
        for target in groups:
            spec_t = specs[target]
            if isinstance(spec_t, SequenceSpec):
                continue  # sequence targets use their best active source, see synthesize_encoded
            sources = result.sources_of(target)
            preds = np.stack([result.link_predict(s, target, enc[s][val_idx]) for s in sources])
            ens = build_ensemble(
                ensemble, len(sources), spec_t.link_dim, spec_t.link_task, priors[target]
            )
            result.ensembles[target] = train_ensemble(ens, preds, enc[target][val_idx], config)
        return result

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def link_predict(self, source: str, target: str, encoded: np.ndarray) -> np.ndarray:
        """One link on encoded source outputs -> activated target rows (token ids for sequences)."""
        link = self.links[(source, target)]
        dtype = np.int64 if isinstance(self.specs[source], SequenceSpec) else np.float32
        x = torch.from_numpy(np.ascontiguousarray(encoded, dtype=dtype))
        if is_sequence_link(link):
            return decode_tokens(link(x), link.vocab_size).numpy()
        return activate(self.specs[target].link_task, link(x)).numpy()

    @torch.no_grad()
    def combine(self, target: str, preds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Ensemble ``(S, n, d)`` link predictions under per-row active masks ``(n, S)``."""
        out = self.ensembles[target](torch.from_numpy(preds), torch.from_numpy(mask)).numpy()
        empty = ~mask.any(axis=1)
        if empty.any():
            out[empty] = self.priors[target]
        return out

    def fast_target(self, target: str) -> FastTarget | None:
        """The numpy fast path for ``target`` (None when a link or the target is a sequence)."""
        if target not in self._fast:
            sources = self.sources_of(target)
            links = [self.links[(s, target)] for s in sources]
            usable = (
                sources
                and target in self.ensembles
                and all(isinstance(link, VecToVecLink) for link in links)
            )
            self._fast[target] = (
                FastTarget(
                    sources,
                    links,
                    self.ensembles[target],
                    self.specs[target].link_task,
                    self.priors[target],
                )
                if usable
                else None
            )
        return self._fast[target]

    def synthesize_encoded(self, target: str, available: Mapping[str, np.ndarray]) -> np.ndarray:
        """Synthesize ``target`` in link space from the encoded outputs of the available models."""
        fast = self.fast_target(target)
        if fast is not None:
            return fast(available)
        sources = self.sources_of(target)
        present = [s for s in sources if s in available]
        n = next(iter(available.values())).shape[0] if available else 1
        if not present:
            return np.repeat(self.priors[target][None], n, axis=0)
        if isinstance(self.specs[target], SequenceSpec):
            best = max(present, key=lambda s: self.link_scores[(s, target)])
            return self.link_predict(best, target, available[best])
        dim = self.specs[target].link_dim
        preds = np.zeros((len(sources), n, dim), dtype=np.float32)
        for i, s in enumerate(sources):
            if s in available:
                preds[i] = self.link_predict(s, target, available[s])
        mask = np.tile(np.array([s in available for s in sources]), (n, 1))
        return self.combine(target, preds, mask)

    def synthesize(
        self, target: str, outputs: Mapping[str, Sequence[Any]], trusted: bool = False
    ) -> Any:
        """Synthesize ``target``'s outputs from real outputs of other models (aligned lists).

        ``trusted`` skips re-validating outputs that were already checked against their specs
        (the link operator validates every output on arrival).
        """
        encoded = {
            m: encode_batch(self.specs[m], v, trusted=trusted)
            for m, v in outputs.items()
            if m in self.specs and m != target
        }
        return decode_rows(self.specs[target], self.synthesize_encoded(target, encoded))

    def agreement_oracle(self, outputs: Mapping[str, Sequence[Any]]) -> AgreementOracle:
        """Measured agreement of every target for any active set, on these aligned outputs."""
        return AgreementOracle(self, outputs)

    def validation_oracle(self, trained_on: Mapping[str, Sequence[Any]]) -> AgreementOracle:
        """The oracle on the held-out rows of the outputs this set was trained on (``train``)."""
        return self.agreement_oracle(
            {m: [v[i] for i in self.val_index] for m, v in trained_on.items()}
        )

    # ------------------------------------------------------------------ storage
    def to_bundle(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """Tensors and JSON metadata for :class:`mlink.linkstore.store.LinkStore`."""
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for (s, t), link in self.links.items():
            tensors[f"link/{s}/{t}"] = dict(link.state_dict())
        for t, ens in self.ensembles.items():
            tensors[f"ensemble/{t}"] = dict(ens.state_dict())
        for t, prior in self.priors.items():
            tensors[f"prior/{t}"] = {"value": torch.from_numpy(np.ascontiguousarray(prior))}
        meta = {
            "kind": "mlink.linkset",
            "models": {m: spec.to_dict() for m, spec in self.specs.items()},
            "links": [
                {"source": s, "target": t, "val_score": float(self.link_scores[(s, t)])}
                for (s, t) in self.links
            ],
            "ensemble_kind": self.ensemble_kind,
            "config": asdict(self.config),
            "n_train": self.n_train,
        }
        return tensors, meta

    @classmethod
    def from_bundle(
        cls, tensors: Mapping[str, Mapping[str, torch.Tensor]], meta: Mapping[str, Any]
    ) -> LinkSet:
        if meta.get("kind") != "mlink.linkset":
            raise ValueError(f"bundle is a {meta.get('kind')!r}, not an mlink.linkset")
        specs = specs_from_meta(meta)
        config = TrainConfig(**meta["config"])
        links: dict[Pair, nn.Module] = {}
        scores: dict[Pair, float] = {}
        for entry in meta["links"]:
            s, t = entry["source"], entry["target"]
            link = build_link(
                specs[s], specs[t], config.hidden_mult, config.dropout, config.min_hidden
            )
            link.load_state_dict(tensors[f"link/{s}/{t}"])
            links[(s, t)] = link.eval()
            scores[(s, t)] = entry["val_score"]
        result = cls(
            specs, links, {}, {}, scores, config, meta["ensemble_kind"], meta.get("n_train", 0)
        )
        for t, spec in specs.items():
            result.priors[t] = tensors[f"prior/{t}"]["value"].numpy()
            if isinstance(spec, SequenceSpec) or f"ensemble/{t}" not in tensors:
                continue
            ens = build_ensemble(
                meta["ensemble_kind"], len(result.sources_of(t)), spec.link_dim, spec.link_task
            )
            ens.load_state_dict(tensors[f"ensemble/{t}"])
            result.ensembles[t] = ens.eval()
        return result


def _training_groups(
    specs: Mapping[str, OutputSpec], targets: Sequence[str]
) -> dict[str, tuple[list[str], list[str]]]:
    """Per target: sources trained together as one stacked network, and those trained alone."""
    groups = {}
    for target in targets:
        spec_t = specs[target]
        sources = [s for s in specs if s != target]
        if isinstance(spec_t, SequenceSpec):
            groups[target] = ([], sources)
        else:
            stacked = [s for s in sources if not isinstance(specs[s], SequenceSpec)]
            groups[target] = (stacked, [s for s in sources if s not in stacked])
    return groups
