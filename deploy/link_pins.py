"""Pinning a running pipeline to one link version, and rolling back (``mlink links``).

Retraining hot-swaps every new version as soon as the trainer saves it. A retrain can make
things worse: links fitted on an odd stretch of video, or on too few frames. An operator
then pins the version that was good. The controller plans from it, whatever newer versions
the trainer saves, until the pipeline is unpinned; the trainer's pruning keeps it. The pin is
a message on the control topic like ``mlink budget``'s, so it survives restarts and fail-overs.
A store that later loses the pinned version ends the pin: the links are learned again
(docs/link-store.md, "Pinning and rolling back").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mlink.deploy.config import PipelineConfig
from mlink.deploy.runner import publish_control, read_control
from mlink.linkstore.store import LinkStore, StoreError
from mlink.linkstore.store_files import local_store_path
from mlink.linkstore.store_reads import BundleMeta
from mlink.operators.state import ControlState
from mlink.topics.control import PIN_KEY
from mlink.topics.records import ControlMessage

__all__ = [
    "LinkRow",
    "PinError",
    "check_pinnable",
    "existing_store",
    "link_rows",
    "pin_links",
    "pin_message",
    "rollback_version",
    "unpin_links",
]


class PinError(ValueError):
    """A pin that cannot be made; the message says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class LinkRow:
    """One stored version as ``mlink links`` lists it."""

    version: int
    created_at: str
    """ISO 8601, UTC."""
    links: int
    samples: int | None
    mean_val_score: float | None
    in_force: bool
    pinned: bool
    newest: bool


def existing_store(root: str) -> LinkStore:
    """The config's link store, refused when it is a local directory that does not exist:
    opening it would create an empty store, and a pipeline with no links, where the workers'
    store is elsewhere (a relative ``links.store`` resolves against the current directory)."""
    local = local_store_path(root)
    if local is not None and not local.is_dir():
        raise PinError(
            f"link store {local.absolute()} does not exist: a relative links.store resolves "
            "against the directory mlink runs in; run this where the workers run, or give "
            "links.store as an absolute path or URL"
        )
    return LinkStore(root)


def link_rows(
    state: ControlState, store: LinkStore, metas: Sequence[BundleMeta] | None = None
) -> list[LinkRow]:
    """Every version the store holds, oldest first, with what the pipeline does with it
    (``metas``: ``store.versions()`` when the caller has read them already)."""
    rows = []
    for meta in store.versions() if metas is None else metas:
        links = meta.meta.get("links", [])
        links = links if isinstance(links, list) else []  # a version not made by the trainer
        scores = [
            float(x["val_score"])
            for x in links
            if isinstance(x, dict) and isinstance(x.get("val_score"), int | float)
        ]
        rows.append(
            LinkRow(
                version=meta.version,
                created_at=meta.created_at,
                links=len(links),
                samples=meta.meta.get("n_samples"),
                mean_val_score=sum(scores) / len(scores) if scores else None,
                in_force=meta.version == state.link_version,
                pinned=meta.version == state.pinned_links,
                newest=meta.version == state.latest_links,
            )
        )
    return rows


def check_pinnable(store: LinkStore, version: int) -> None:
    """Refuse a version the store does not hold whole: every worker would fail to load it."""
    try:
        whole = store.intact(version)
    except (StoreError, ValueError) as exc:
        raise PinError(f"cannot read link version {version} in {store.root}: {exc}") from None
    if not whole:
        held = [meta.version for meta in store.versions()]
        raise PinError(
            f"the link store {store.root} does not hold version {version} whole (missing or "
            f"damaged); it holds {held or 'no versions'}"
        )


def rollback_version(state: ControlState, held: Sequence[int]) -> int:
    """The newest stored version older than the one in force: what ``--rollback`` pins."""
    if state.link_version is None:
        raise PinError("no links are in force (the pipeline is warming up): nothing to roll back")
    older = [v for v in held if v < state.link_version]
    if not older:
        raise PinError(
            f"the store holds no version older than v{state.link_version}, the one in force "
            f"(it holds {sorted(held)}); pin one with --pin N"
        )
    return max(older)


def pin_message(version: int, pin: bool) -> ControlMessage:
    """The control message that pins ``version`` (``pin``) or follows the newest again."""
    return ControlMessage(
        kind="link_version",
        epoch=0,
        issued_at=time.time(),
        link_version=version,
        extra={PIN_KEY: pin},
    )


def pin_links(bootstrap: str, config: PipelineConfig, version: int | None) -> int:
    """Pin the running pipeline to ``version`` (None: roll back one version); return it."""
    store = existing_store(config.links.store)
    if version is None:
        state, _ = read_control(bootstrap, config)
        version = rollback_version(state, [meta.version for meta in store.versions()])
    check_pinnable(store, version)
    publish_control(bootstrap, config, pin_message(version, True))
    return version


def unpin_links(bootstrap: str, config: PipelineConfig) -> int | None:
    """Follow the newest version again; return the version that was pinned (None: none was)."""
    state, _ = read_control(bootstrap, config)
    if state.pinned_links is None:
        return None
    publish_control(bootstrap, config, pin_message(state.pinned_links, False))
    return state.pinned_links
