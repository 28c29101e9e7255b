"""The link store on an object store: a real S3-compatible server (moto) on loopback.

Two ``LinkStore`` instances with their own S3 clients stand for two machines that share no
directory. The local store's crash tests are in ``tests/test_store.py``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from mlink.linkstore.objectstore import ObjectLinkStore
from mlink.linkstore.store import IntegrityError, LinkStore, StoreError
from tests.s3 import S3Server
from tests.test_store import assert_same_tensors, make_meta, make_tensors


def open_store(s3: S3Server, url: str, **kwargs: Any) -> LinkStore:
    return LinkStore(url, storage_options=s3.storage_options, **kwargs)


@pytest.fixture
def url(s3: S3Server) -> str:
    return f"s3://{s3.new_bucket('links')}/pipeline-a"


def test_an_fsspec_url_gives_an_object_store_and_a_path_the_local_one(tmp_path) -> None:
    assert type(LinkStore("memory://links/x")) is ObjectLinkStore
    assert type(LinkStore(tmp_path)) is LinkStore
    local = LinkStore(f"file://{tmp_path}/y")
    assert type(local) is LinkStore and local.root == tmp_path / "y"


def test_save_load_promote_rollback_delete_prune(s3: S3Server, url: str) -> None:
    store = open_store(s3, url)
    assert store.current() is None and store.versions() == [] and store.latest() is None
    v1, v2, v3 = (store.save(make_tensors(i), make_meta(i)) for i in (1, 2, 3))
    assert (v1, v2, v3) == (1, 2, 3)
    assert store.current() == v3
    bundle = store.load()
    assert_same_tensors(bundle.tensors, make_tensors(3))
    assert bundle.meta.meta == make_meta(3)

    staged = store.save(make_tensors(4), make_meta(4), promote=False)
    assert store.current() == v3 and store.latest() == staged
    assert store.rollback() == v2
    assert store.load().meta.meta == make_meta(2)
    token = store.current_token()
    store.promote(staged)
    assert store.current_token()[0] == staged and store.current_token()[1] > token[1]

    with pytest.raises(StoreError, match="is the current version"):
        store.delete(staged)
    store.delete(v3)
    with pytest.raises(StoreError, match=r"version 3 does not exist .*\[1, 2, 4\]"):
        store.load(v3)
    assert store.save(make_tensors(5), {}) == 5  # a deleted number is never reused
    assert store.prune(keep=1) == [1, 2, 4]
    assert [m.version for m in store.versions()] == [5]


def test_two_machines_see_each_others_versions(s3: S3Server, url: str) -> None:
    trainer, worker = open_store(s3, url), open_store(s3, url)
    assert trainer.fs is not worker.fs  # separate S3 clients, nothing shared but the bucket
    assert worker.current_token() == (None, 0.0)
    version = trainer.save(make_tensors(7), make_meta(7))
    assert worker.current_token()[0] == version
    assert_same_tensors(worker.load().tensors, make_tensors(7))
    worker.save(make_tensors(8), make_meta(8), promote=False)
    assert trainer.latest() == 2
    trainer.promote(2)
    assert worker.load().meta.meta == make_meta(8)


def test_concurrent_writers_get_distinct_versions(s3: S3Server, url: str) -> None:
    stores = [open_store(s3, url) for _ in range(4)]
    saved: list[int] = []
    errors: list[BaseException] = []

    def write(store: LinkStore, tag: int) -> None:
        try:
            for i in range(3):
                saved.append(store.save(make_tensors(tag * 10 + i), {"tag": tag * 10 + i}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(saved) == list(range(1, 13))  # every save got its own number
    reader = open_store(s3, url)
    for meta in reader.versions():  # and each version holds what its writer saved
        tag = meta.meta["tag"]
        assert_same_tensors(reader.load(meta.version).tensors, make_tensors(tag))


def test_a_claimed_number_is_skipped(s3: S3Server, url: str) -> None:
    store = open_store(s3, url)
    store.save(make_tensors(1), {})
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    # Another writer claimed 2 and died before writing anything: 2 stays taken.
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}/claims/v000002.json", Body=b"{}")
    assert store.save(make_tensors(3), {}) == 3


def test_a_half_written_version_is_invisible(s3: S3Server, url: str) -> None:
    store = open_store(s3, url)
    store.save(make_tensors(1), {})
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    client = s3.client()
    # A writer claimed 2 and wrote its tensors, then crashed before the manifest.
    client.put_object(Bucket=bucket, Key=f"{prefix}/claims/v000002.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key=f"{prefix}/v000002/tensors.safetensors", Body=b"xx")
    assert [m.version for m in store.versions()] == [1]
    assert store.latest() == 1
    with pytest.raises(StoreError, match="version 2 does not exist"):
        store.promote(2)
    assert store.save(make_tensors(3), {}) == 3


def test_tampered_object_is_detected_and_remembered(
    s3: S3Server, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(s3, url)
    good = store.save(make_tensors(1), {})
    bad = store.save(make_tensors(2), {})
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    client = s3.client()
    key = f"{prefix}/v{bad:06d}/tensors.safetensors"
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-3] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    worker = open_store(s3, url)
    reads: list[str] = []
    original = worker.fs.cat_file
    monkeypatch.setattr(worker.fs, "cat_file", lambda p, *a, **k: reads.append(p) or original(p))
    with pytest.raises(IntegrityError, match=r"version 2 .*tensors\.safetensors.*sha256"):
        worker.load()
    first = len(reads)
    for _ in range(5):  # every frame asks again: the bad version is not re-read
        with pytest.raises(IntegrityError, match="version 2"):
            worker.load(bad)
    assert len(reads) == first  # nothing was read again
    with pytest.raises(IntegrityError):
        store.promote(bad)  # a corrupt version can never become current
    store.promote(good)
    assert_same_tensors(worker.load().tensors, make_tensors(1))


def test_a_version_is_read_and_hashed_once_per_store(
    s3: S3Server, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = open_store(s3, url).save(make_tensors(1), {})
    worker = open_store(s3, url)
    reads: list[str] = []
    original = worker.fs.cat_file
    monkeypatch.setattr(worker.fs, "cat_file", lambda p, *a, **k: reads.append(p) or original(p))
    first = worker.load(version)
    for _ in range(10):
        assert worker.load(version) is first
    assert [p.rsplit("/", 1)[-1] for p in reads] == [
        "MANIFEST.json",
        "meta.json",
        "tensors.safetensors",
    ]
    uncached = open_store(s3, url, cache_size=0)
    assert uncached.load(version) is not uncached.load(version)


def test_the_environment_alone_configures_s3(
    s3: S3Server, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers get only the URL (``links.store``) and the usual AWS_* variables."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    version = open_store(s3, url).save(make_tensors(4), {})
    store = LinkStore(url)  # no storage_options: as the workers and the controller open it
    assert isinstance(store, ObjectLinkStore)
    assert store.load().version == version
    assert torch.equal(
        store.load().tensors["ensemble/person"]["weights"],
        make_tensors(4)["ensemble/person"]["weights"],
    )


def test_a_bad_url_names_the_extra() -> None:
    with pytest.raises(StoreError, match="cannot open the link store"):
        LinkStore("nosuchscheme://bucket/x")


def test_a_missing_bucket_is_named_and_never_created(s3: S3Server) -> None:
    store = open_store(s3, "s3://no-such-bucket-mlink/links")
    assert store.current() is None
    with pytest.raises(StoreError, match="Create the bucket first"):
        store.save(make_tensors(1), {})
    names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-mlink" not in names


def test_a_replaced_bucket_numbers_above_what_it_was_told(s3: S3Server) -> None:
    """A new, empty bucket under a pipeline that has named version 5: the next is 6."""
    old = open_store(s3, f"s3://{s3.new_bucket('old')}/p")
    assert old.save(make_tensors(1), make_meta(1)) == 1 and old.holds(1)
    new = open_store(s3, f"s3://{s3.new_bucket('new')}/p")
    assert not new.holds(1)
    assert new.save(make_tensors(2), make_meta(2), after=5) == 6
    assert new.holds(6) and new.load(6).meta.meta == make_meta(2)


def test_intact_tells_a_damaged_object_from_a_good_one(s3: S3Server, url: str) -> None:
    store = open_store(s3, url)
    v = store.save(make_tensors(1), make_meta(1))
    assert store.intact(v) and not store.intact(v + 1)
    store.fs.pipe_file(store._file(v, "tensors.safetensors"), b"damaged")
    assert store.holds(v) and not store.intact(v)


def test_prune_also_sweeps_old_claims_and_half_written_versions(s3: S3Server, url: str) -> None:
    store = open_store(s3, url)
    for tag in (1, 2, 3):
        store.save(make_tensors(tag), {})
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    client = s3.client()
    # v4 was claimed and half written by a writer that crashed; v5 is a later, complete version
    client.put_object(Bucket=bucket, Key=f"{prefix}/claims/v000004.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key=f"{prefix}/v000004/tensors.safetensors", Body=b"xx")
    assert store.save(make_tensors(5), {}) == 5
    assert store.prune(1) == [1, 2, 3]

    def keys(under: str) -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{under}")
        return sorted(o["Key"].removeprefix(f"{prefix}/") for o in listed.get("Contents", []))

    assert keys("claims/") == ["claims/v000005.json"]
    assert [k for k in keys("v") if not k.startswith("v000005/")] == []
    assert store.save(make_tensors(6), {}) == 6  # no number handed out twice
    assert [m.version for m in store.versions()] == [5, 6]


def test_prune_keeps_a_protected_version(s3: S3Server, url: str) -> None:
    store = open_store(s3, url)
    for tag in (1, 2, 3, 4):
        store.save(make_tensors(tag), {})
    assert store.prune(1, protect={2}) == [1, 3]  # a pipeline pinned to v2 keeps it
    assert [m.version for m in store.versions()] == [2, 4]
    assert store.intact(2)


def test_other_weights_under_the_same_number_are_not_held(s3: S3Server, url: str) -> None:
    store = open_store(s3, url)
    store.save(make_tensors(1), make_meta(1))
    sha = store.load(1).meta.sha256
    assert store.holds(1, sha) and store.intact(1, sha)
    assert not store.holds(1, "0" * 64) and not store.intact(1, "0" * 64)
    assert not store.holds(2, sha)


def test_mlink_check_finds_a_bucket_the_trainer_could_not_write(s3: S3Server, url: str) -> None:
    """Before, an object store was never probed: a typo in the bucket showed at the first save,
    after the warm-up. The probe puts one object and deletes it again."""
    store = open_store(s3, url)
    assert store.writable_problem() is None
    bucket = url.removeprefix("s3://").split("/")[0]
    left = s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    assert left == 0  # the probe cleaned up after itself
    missing = open_store(s3, "s3://no-such-bucket-mlink/pipeline-a")
    problem = missing.writable_problem()
    assert problem is not None
    assert "s3://no-such-bucket-mlink/pipeline-a is not writable" in problem
    assert "check that the bucket exists" in problem
