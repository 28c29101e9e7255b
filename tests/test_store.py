"""Tests for mlink.linkstore.store on a real filesystem, including crashes and races.

Crash tests fork a child that dies with os._exit at an exact write/fsync/rename/replace
call (no finally blocks run, exactly like a power cut from the store's point of view) or
that is SIGKILLed at random moments; the parent then checks the store's invariants.
"""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mlink.linkstore import store_format
from mlink.linkstore.store import (
    Bundle,
    BundleMeta,
    IntegrityError,
    LinkStore,
    StoreError,
)

# fork keeps child start-up to milliseconds (spawn would re-import torch per child).
CTX = mp.get_context("fork")


def make_tensors(tag: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(tag)
    return {
        "link/face->person": {
            "0.weight": torch.randn(8, 4, generator=gen),
            "0.bias": torch.randn(8, generator=gen),
            "steps": torch.tensor(tag, dtype=torch.int64),
        },
        "ensemble/person": {
            "weights": torch.randn(3, generator=gen),
            "counts": torch.arange(6, dtype=torch.int64).reshape(2, 3) + tag,
        },
    }


def make_meta(tag: int = 0) -> dict[str, Any]:
    return {
        "links": {
            "link/face->person": {
                "source": "face",
                "target": "person",
                "specs": {"hidden": [32, 16], "activation": "relu"},
                "agreement": 0.9375,
                "samples": 1200 + tag,
            }
        },
        "tag": tag,
    }


def assert_same_tensors(got: dict[str, dict[str, torch.Tensor]], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for name, state in want.items():
        assert set(got[name]) == set(state), name
        for param, tensor in state.items():
            loaded = got[name][param]
            assert loaded.dtype == tensor.dtype, (name, param)
            assert loaded.shape == tensor.shape, (name, param)
            assert torch.equal(loaded, tensor), (name, param)


def debris(root: Path) -> list[str]:
    return sorted(e for e in os.listdir(root) if e.startswith((".tmp-", ".trash-")))


def tmp_numbers(root: Path) -> set[int]:
    return {int(m.group(1)) for e in os.listdir(root) if (m := re.match(r"\.tmp-v(\d+)-", e))}


# ---------------------------------------------------------------------- round trips


def test_round_trip_tensors_and_metadata_exactly(tmp_path: Path) -> None:
    store = LinkStore(tmp_path / "nested" / "store")  # missing parents are created
    tensors = make_tensors(3)
    tensors["odd%2F/names"] = {
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "half": torch.ones(2, 2, dtype=torch.float16),
        "bf16": torch.full((3,), 1.5, dtype=torch.bfloat16),
        "mask": torch.tensor([True, False]),
        "bytes": torch.arange(5, dtype=torch.uint8),
        "transposed": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
    }
    tensors["empty/state"] = {}
    meta = make_meta(3)
    meta["tuple"] = (1, 2.0, None, True)
    meta["proxy"] = MappingProxyType({"k": (3,)})

    version = store.save(tensors, meta)
    bundle = store.load(version)

    assert isinstance(bundle, Bundle)
    assert bundle.version == version == 1
    assert_same_tensors(bundle.tensors, tensors)
    assert bundle.tensors["link/face->person"]["0.weight"].dtype == torch.float32
    assert bundle.tensors["ensemble/person"]["counts"].dtype == torch.int64
    assert bundle.tensors["odd%2F/names"]["transposed"].is_contiguous()
    assert bundle.meta.meta == {**meta, "tuple": [1, 2.0, None, True], "proxy": {"k": [3]}}
    assert bundle.meta.names == tuple(tensors)
    # load(None) is the promoted version and gives the same content
    assert_same_tensors(store.load().tensors, tensors)


def test_saved_bytes_are_decoupled_from_caller_tensors(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    weight = torch.zeros(4)
    tied = {"m": {"a": weight, "b": weight}}  # tied weights share storage
    v = store.save(tied, {})
    weight += 1  # keep training after saving
    loaded = store.load(v).tensors["m"]
    assert torch.equal(loaded["a"], torch.zeros(4))
    assert torch.equal(loaded["b"], torch.zeros(4))


@given(st.text(max_size=12), st.text(max_size=12))
def test_key_flattening_round_trips_any_names(name: str, param: str) -> None:
    key = store_format._join_key(name, param)
    assert key.count("/") == 1
    assert store_format._split_key(key) == (name, param)


def test_versions_metadata(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    before = datetime.now().astimezone()
    v1 = store.save(make_tensors(1), make_meta(1))
    v2 = store.save(make_tensors(2), make_meta(2), promote=False)

    metas = store.versions()
    assert [m.version for m in metas] == [v1, v2] == [1, 2]
    for m, tag in zip(metas, (1, 2), strict=True):
        assert isinstance(m, BundleMeta)
        assert m.meta == make_meta(tag)
        assert m.names == ("link/face->person", "ensemble/person")
        created = datetime.fromisoformat(m.created_at)
        assert created.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= created <= datetime.now().astimezone()
        payload = (tmp_path / f"v{m.version:06d}" / "tensors.safetensors").read_bytes()
        assert m.sha256 == hashlib.sha256(payload).hexdigest()
    assert metas[0].sha256 != metas[1].sha256
    # identical weights give identical payload digests
    v3 = store.save(make_tensors(1), {"again": True})
    assert store.versions()[-1].sha256 == metas[0].sha256
    assert store.latest() == v3 == 3


def test_empty_store(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    assert store.versions() == []
    assert store.current() is None
    assert store.latest() is None
    assert store.current_token() == (None, 0.0)
    with pytest.raises(StoreError, match=r"no version .* is promoted"):
        store.load()
    with pytest.raises(StoreError, match="cannot roll back"):
        store.rollback()


def test_store_path_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        LinkStore(path)


# ---------------------------------------------------------------------- input validation


def test_non_json_meta_is_rejected_naming_the_key(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    bad = make_meta()
    bad["links"]["link/face->person"]["specs"]["fn"] = object()
    with pytest.raises(
        StoreError, match=r"meta\['links'\]\['link/face->person'\]\['specs'\]\['fn'\]"
    ):
        store.save(make_tensors(), bad)
    with pytest.raises(StoreError, match=r"meta\['scores'\]\[1\] is nan"):
        store.save(make_tensors(), {"scores": [0.5, float("nan")]})
    with pytest.raises(StoreError, match="meta must be a JSON object"):
        store.save(make_tensors(), [1, 2])  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="non-string key 3"):
        store.save(make_tensors(), {"by_id": {3: "x"}})
    with pytest.raises(StoreError, match=r"tensors\['m'\]\['w'\] is a list"):
        store.save({"m": {"w": [1.0]}}, {})  # type: ignore[dict-item]
    with pytest.raises(StoreError, match="only dense tensors"):
        store.save({"m": {"w": torch.eye(2).to_sparse()}}, {})
    # nothing was written, and the next valid save is version 1
    assert store.versions() == []
    assert debris(tmp_path) == []
    assert store.save(make_tensors(), make_meta()) == 1


def test_bad_arguments(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    store.save(make_tensors(), {})
    for bad in (0, -1, True, "1"):
        with pytest.raises(ValueError, match="version numbers are ints"):
            store.load(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep"):
        store.prune(-1)


def test_missing_version_lists_available(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    store.save(make_tensors(1), {})
    store.save(make_tensors(2), {})
    with pytest.raises(
        StoreError, match=r"version 7 does not exist .*available versions: \[1, 2\]"
    ):
        store.load(7)
    with pytest.raises(StoreError, match=r"available versions: \[1, 2\]"):
        store.promote(7)
    with pytest.raises(StoreError, match=r"available versions: \[1, 2\]"):
        store.delete(7)


# ---------------------------------------------------------------------- numbering & promotion


def test_version_numbers_increase_and_never_repeat(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    assert [store.save(make_tensors(i), {}) for i in range(3)] == [1, 2, 3]
    store.promote(1)
    store.delete(3)  # deleting the latest must not free its number
    assert store.latest() == 2
    assert store.save(make_tensors(9), {}) == 4
    # a fresh LinkStore on the same directory continues the sequence
    assert LinkStore(tmp_path).save(make_tensors(10), {}) == 5
    assert (tmp_path / "v000005").is_dir()


def test_promote_and_rollback_history(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    v1, v2, v3 = (store.save(make_tensors(i), make_meta(i)) for i in (1, 2, 3))
    assert store.current() == v3
    staged = store.save(make_tensors(4), make_meta(4), promote=False)
    assert store.current() == v3  # staged, not served
    assert store.latest() == staged

    assert store.rollback() == v2
    assert store.current() == v2
    assert store.load().meta.meta == make_meta(2)
    assert store.rollback() == v1
    with pytest.raises(StoreError, match="no earlier promoted version"):
        store.rollback()
    assert store.current() == v1  # a failed rollback changes nothing

    store.promote(staged)
    store.promote(staged)  # re-promoting the current version is a no-op
    assert store.rollback() == v1
    store.promote(v3)
    store.promote(v2)
    store.delete(v3)  # deleted versions are skipped by rollback
    assert store.rollback() == v1


def test_current_token_changes_only_on_promotion(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    v1 = store.save(make_tensors(1), {})
    t1 = store.current_token()
    assert t1[0] == v1 and t1[1] > 0
    assert store.current_token() == t1  # stable while nothing happens
    v2 = store.save(make_tensors(2), {}, promote=False)
    assert store.current_token() == t1  # staging is invisible to pollers
    store.promote(v2)
    t2 = store.current_token()
    assert t2[0] == v2 and t2[1] > t1[1]
    store.promote(v1)
    store.promote(v2)  # back to the same version: token still moves on
    t3 = store.current_token()
    assert t3[0] == v2 and t3[1] > t2[1]
    store.delete(v1)  # editing history alone is not a promotion
    assert store.current_token() == t3


def test_delete_and_prune_never_remove_current(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    for i in range(5):
        store.save(make_tensors(i), make_meta(i))
    store.promote(2)
    with pytest.raises(StoreError, match="version 2 is the current version"):
        store.delete(2)

    assert store.prune(keep=2) == [1, 3]
    assert [m.version for m in store.versions()] == [2, 4, 5]
    assert store.prune(keep=0) == [4, 5]
    assert [m.version for m in store.versions()] == [2]
    assert store.prune(keep=0) == []
    assert_same_tensors(store.load().tensors, make_tensors(1))  # v2 holds tag 1
    assert store.save(make_tensors(6), {}) == 6
    assert debris(tmp_path) == []


# ---------------------------------------------------------------------- integrity


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_tensor_byte_raises_integrity_error(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    v1 = store.save(make_tensors(1), {})
    v2 = store.save(make_tensors(2), {})
    tensor_file = tmp_path / "v000002" / "tensors.safetensors"
    flip_byte(tensor_file, tensor_file.stat().st_size - 3)  # inside tensor data

    with pytest.raises(IntegrityError, match=r"version 2 .*tensors\.safetensors.*rollback"):
        store.load(v2)
    with pytest.raises(IntegrityError, match="version 2"):
        store.load()  # the current one
    assert issubclass(IntegrityError, StoreError)
    # listing reads only metadata and still works, so the version can be found and removed
    assert [m.version for m in store.versions()] == [v1, v2]
    # a corrupt version can never be promoted
    store.promote(v1)
    with pytest.raises(IntegrityError):
        store.promote(v2)
    assert store.current() == v1
    store.delete(v2)
    assert_same_tensors(store.load().tensors, make_tensors(1))


def test_tampered_metadata_raises_integrity_error(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    v = store.save(make_tensors(), make_meta())
    meta_file = tmp_path / "v000001" / "meta.json"
    meta_file.write_text(meta_file.read_text().replace("0.9375", "0.9999"))
    with pytest.raises(IntegrityError, match=r"version 1 .*meta\.json"):
        store.load(v)
    with pytest.raises(IntegrityError, match=r"meta\.json"):
        store.versions()
    (tmp_path / "v000001" / "MANIFEST.json").write_text("{not json")
    # A store instance remembers a version it found corrupt; a new one reads it again.
    with pytest.raises(IntegrityError, match=r"meta\.json"):
        store.load(v)
    with pytest.raises(IntegrityError, match=r"MANIFEST\.json is not valid JSON"):
        LinkStore(tmp_path).load(v)


# ---------------------------------------------------------------------- locking


def test_readers_need_no_lock_and_writers_time_out(tmp_path: Path) -> None:
    store = LinkStore(tmp_path, lock_timeout=0.2)
    v = store.save(make_tensors(1), make_meta(1))
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another writer holds the lock
        assert store.load().version == v
        assert [m.version for m in store.versions()] == [v]
        assert store.current_token()[0] == v
        start = time.monotonic()
        with pytest.raises(StoreError, match=r"waiting for the writer lock .*\.lock"):
            store.save(make_tensors(2), {})
        assert time.monotonic() - start >= 0.2
    finally:
        os.close(fd)
    assert store.save(make_tensors(2), {}) == 2


def _concurrent_saver(root: str, worker: int, count: int, barrier: Any, out: Any) -> None:
    store = LinkStore(root)
    barrier.wait()
    for i in range(count):
        tag = worker * 100 + i
        out.put((store.save(make_tensors(tag), {"tag": tag}), tag))


def test_concurrent_saves_get_distinct_versions(tmp_path: Path) -> None:
    workers, count = 4, 5
    barrier = CTX.Barrier(workers)
    out = CTX.Queue()
    procs = [
        CTX.Process(target=_concurrent_saver, args=(str(tmp_path), w, count, barrier, out))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in range(workers * count)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    versions = sorted(v for v, _ in results)
    assert versions == list(range(1, workers * count + 1))
    store = LinkStore(tmp_path)
    assert [m.version for m in store.versions()] == versions
    for version, tag in results:
        bundle = store.load(version)
        assert bundle.meta.meta == {"tag": tag}
        assert_same_tensors(bundle.tensors, make_tensors(tag))
    assert store.current() in versions
    assert debris(tmp_path) == []


# ---------------------------------------------------------------------- crash safety


_CRASH_POINTS = ("write", "fsync", "rename", "replace")


def _crash_at(root: str, k: int, tag: int) -> None:
    """Child: save, but die abruptly on the k-th durability-relevant OS call."""
    calls = 0
    originals = {name: getattr(os, name) for name in _CRASH_POINTS}

    def hook(name: str) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == k:
                if name == "write":  # leave a half-written file behind
                    fd, data = args
                    originals["write"](fd, bytes(data[: len(data) // 2]))
                os._exit(17)
            return originals[name](*args, **kwargs)

        return wrapped

    for name in _CRASH_POINTS:
        setattr(os, name, hook(name))
    LinkStore(root).save(make_tensors(tag), make_meta(tag))
    os._exit(0)


def check_invariants(store: LinkStore, known: dict[int, int]) -> None:
    """Every listed version is complete and exactly what was saved under that number."""
    listed = [m.version for m in store.versions()]
    assert listed == sorted(listed)
    for version in listed:
        bundle = store.load(version)
        tag = bundle.meta.meta["tag"]
        assert_same_tensors(bundle.tensors, make_tensors(tag))
        if version in known:
            assert known[version] == tag
        known[version] = tag
    current = store.current()
    assert current in listed
    assert store.load().version == current


def test_crash_at_every_write_fsync_rename_replace(tmp_path: Path) -> None:
    """Kill a save at each OS call in turn; the store must survive each one."""
    store = LinkStore(tmp_path)
    known = {store.save(make_tensors(0), make_meta(0)): 0}
    seen_numbers = set(known)
    crashed_at = []
    k = 0
    while True:
        k += 1
        assert k < 100, "save never completed: crash hook out of control"
        tag = 1000 + k
        before_current = store.current()
        child = CTX.Process(target=_crash_at, args=(str(tmp_path), k, tag))
        child.start()
        child.join(timeout=30)
        if child.exitcode == 0:  # k exceeded the number of calls a save makes
            break
        assert child.exitcode == 17
        crashed_at.append(k)

        check_invariants(store, known)
        new = set(known) - seen_numbers
        assert store.current() in {before_current, *new}  # old one, or the complete new one
        leftovers = tmp_numbers(tmp_path)

        # the next save cleans up, and gets a number never seen, even in debris
        v = store.save(make_tensors(tag + 5000), make_meta(tag + 5000))
        assert v > max(seen_numbers | new | leftovers)
        assert debris(tmp_path) == []
        known[v] = tag + 5000
        seen_numbers |= {v, *new, *leftovers}
        assert store.current() == v
        check_invariants(store, known)

    # a save makes several writes, fsyncs, a rename and replaces: all were exercised
    assert len(crashed_at) >= 10


def _save_forever(root: str, ready: Any) -> None:
    store = LinkStore(root)
    ready.set()
    i = 0
    while True:
        i += 1
        store.save(make_tensors(i % 7), {"tag": i % 7}, promote=i % 3 != 0)


def test_sigkill_during_save_loop(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    store.save(make_tensors(0), {"tag": 0})
    rng = random.Random(1234)
    highest = 1
    for _ in range(12):
        ready = CTX.Event()
        child = CTX.Process(target=_save_forever, args=(str(tmp_path), ready))
        child.start()
        assert ready.wait(timeout=10)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGKILL

        check_invariants(store, {})
        highest = max(highest, store.latest() or 0, *tmp_numbers(tmp_path))
        v = store.save(make_tensors(3), {"tag": 3})
        assert v > highest
        assert debris(tmp_path) == []
        highest = v
    assert len(store.versions()) > 12  # the children really did save between kills


def test_failed_save_in_process_leaves_no_trace(tmp_path: Path, monkeypatch: Any) -> None:
    """An ordinary exception (disk full, ...) mid-save cleans up and keeps the store usable."""
    store = LinkStore(tmp_path)
    v1 = store.save(make_tensors(1), make_meta(1))
    real_rename = os.rename

    def failing_rename(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        store.save(make_tensors(2), make_meta(2))
    monkeypatch.setattr(os, "rename", real_rename)

    assert debris(tmp_path) == []
    assert [m.version for m in store.versions()] == [v1]
    assert store.current() == v1
    assert store.save(make_tensors(3), make_meta(3)) == 3  # 2 was allocated, never reused
    with pytest.raises(StoreError, match=r"available versions: \[1, 3\]"):
        store.load(2)


def test_a_store_wiped_under_a_pipeline_numbers_above_what_it_was_told(tmp_path: Path) -> None:
    """A pipeline whose store was lost still names its old versions: a new version is numbered
    above them, and the store asks the disk, not its cache, whether it holds a version."""
    root = tmp_path / "links"
    store = LinkStore(root)
    assert store.save(make_tensors(1), make_meta(1)) == 1
    store.load(1)  # cached in memory from here on
    assert store.holds(1) and not store.holds(2)
    shutil.rmtree(root)
    assert not store.holds(1) and not store.intact(1)  # gone, though loaded into memory
    assert store.versions() == [] and store.latest() is None
    assert store.save(make_tensors(2), make_meta(2), after=7) == 8  # the root is made again
    assert store.holds(8) and [v.version for v in store.versions()] == [8]
    assert store.save(make_tensors(3), make_meta(3), after=2) == 9  # never below its own
    with pytest.raises(ValueError, match="after is a version number"):
        store.save(make_tensors(4), {}, after=-1)
    with pytest.raises(ValueError, match="version numbers are ints"):
        store.holds(0)


def test_intact_reads_a_version_afresh(tmp_path: Path) -> None:
    """A version damaged on disk after it was loaded: ``load`` still answers from the cache,
    ``intact`` reads and hashes the files again."""
    store = LinkStore(tmp_path)
    v = store.save(make_tensors(1), make_meta(1))
    store.load(v)
    assert store.intact(v) and not store.intact(v + 1)
    flip_byte(tmp_path / f"v{v:06d}" / "tensors.safetensors", -1)
    assert store.holds(v) and not store.intact(v)
    assert store.load(v).version == v  # the verified copy in memory


def test_a_version_with_other_weights_under_the_same_number_is_not_held(tmp_path: Path) -> None:
    """A store replaced by another pipeline's, which also has a v1: asked with the digest of
    the weights a plan was made from, the store does not hold that plan's v1."""
    root = tmp_path / "links"
    ours = LinkStore(root)
    ours.save(make_tensors(1), make_meta(1))
    sha = ours.load(1).meta.sha256
    assert ours.holds(1, sha) and ours.intact(1, sha)
    shutil.rmtree(root)
    assert not ours.holds(1, sha) and not ours.intact(1, sha)  # gone
    theirs = LinkStore(root)
    assert theirs.save(make_tensors(2), make_meta(1)) == 1
    assert theirs.holds(1) and theirs.intact(1)  # by number alone, it looks like ours
    assert not theirs.holds(1, sha) and not theirs.intact(1, sha)
    assert theirs.holds(1, theirs.load(1).meta.sha256)
