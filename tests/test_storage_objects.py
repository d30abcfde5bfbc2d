"""One object, one request: kf2v_tasks.storage.objects and the readers built on it.

On S3 the requests are counted by the proxy in front of a real moto server
(kf2v_testing.s3_faults, no faults injected): a missing key must cost one request,
never s3fs's HeadObject + ListObjects, and a read one GetObject, never HeadObject + GET.
The same calls on local disk and ``memory://`` give the same answers.
"""

from __future__ import annotations

import json
from collections import Counter

import fsspec
import pytest

from kf2v_tasks.generation.ledger import Ledger, LedgerRecord
from kf2v_tasks.storage.conditional import create_exclusive, read_versioned, replace_if
from kf2v_tasks.storage.files import read_bytes, read_json
from kf2v_tasks.storage.objects import (
    get_object,
    is_s3,
    list_files,
    object_exists,
    open_object,
    read_object,
    stat_object,
)
from kf2v_tasks.storage.paths import open_fs
from kf2v_testing.moto_server import MotoS3Server
from kf2v_testing.s3_faults import S3FaultProxy

FP = "ab" * 32


@pytest.fixture
def proxy(s3_proxies) -> S3FaultProxy:
    return s3_proxies(seed=3)


@pytest.fixture
def bucket(s3_server: MotoS3Server) -> str:
    return s3_server.new_bucket("kf2v-obj")


class Requests:
    """S3 requests forwarded by the proxy since the last :meth:`take`, by operation."""

    def __init__(self, proxy: S3FaultProxy) -> None:
        self.proxy = proxy
        self.seen = self._now()

    def _now(self) -> Counter:
        return Counter(
            {
                k.removeprefix("forwarded."): v
                for k, v in self.proxy.counts.items()
                if k.startswith("forwarded.")
            }
        )

    def take(self) -> dict[str, int]:
        now = self._now()
        out = {k: v - self.seen.get(k, 0) for k, v in now.items() if v != self.seen.get(k, 0)}
        self.seen = now
        return out


def _s3(proxy: S3FaultProxy, bucket: str, key: str):
    return open_fs(f"s3://{bucket}/{key}", proxy.storage_options)


# ---------------------------------------------------------------------- S3: request counts


def test_a_missing_key_costs_one_head_or_one_get_never_a_listing(proxy, bucket) -> None:
    fs, path = _s3(proxy, bucket, "out/.kf2v/ledger/missing.json")
    assert is_s3(fs)
    count = Requests(proxy)
    assert object_exists(fs, path) is False
    assert count.take() == {"HeadObject": 1}
    with pytest.raises(FileNotFoundError):
        stat_object(fs, path)
    assert count.take() == {"HeadObject": 1}
    with pytest.raises(FileNotFoundError):
        read_object(fs, path)
    assert count.take() == {"GetObject": 1}


def test_a_present_key_is_read_in_one_get_and_stated_in_one_head(proxy, bucket) -> None:
    fs, path = _s3(proxy, bucket, "out/row-1.json")
    fs.pipe_file(path, b'{"sha256": "x"}')
    count = Requests(proxy)
    assert object_exists(fs, path) is True
    info = stat_object(fs, path)
    assert info["size"] == 15 and info["type"] == "file" and info["ETag"]
    assert count.take() == {"HeadObject": 2}
    data, etag = get_object(fs, path)
    assert data == b'{"sha256": "x"}' and etag == info["ETag"]
    assert read_object(fs, path) == data
    assert count.take() == {"GetObject": 2}


def test_a_folder_of_keys_is_not_a_file(proxy, bucket) -> None:
    fs, path = _s3(proxy, bucket, "out/clips")
    fs.pipe_file(path + "/a.mp4", b"v")
    assert object_exists(fs, path) is False  # s3fs's exists() would say True (a "folder")
    with pytest.raises(FileNotFoundError):
        read_object(fs, path)


def test_reading_never_trusts_the_listing_cache(proxy, bucket) -> None:
    fs, path = _s3(proxy, bucket, "out/.kf2v/ledger/late.json")
    fs.dircache[f"{bucket}/out/.kf2v/ledger"] = []  # a listing cached before the write
    assert fs.exists(path) is False  # what s3fs itself would answer from its cache
    proxy.filesystem().pipe_file(path, b"{}")  # written by another worker's filesystem
    assert object_exists(fs, path) is True
    assert read_object(fs, path) == b"{}"


async def test_small_file_reads_and_ledger_reads_are_one_get(proxy, bucket) -> None:
    opts = proxy.storage_options
    root = f"s3://{bucket}/out"
    count = Requests(proxy)
    with pytest.raises(FileNotFoundError):
        await read_json(f"{root}/row-1.json", storage_options=opts)
    assert count.take() == {"GetObject": 1}

    ledger = Ledger(root, storage_options=opts)
    assert await ledger.get(FP) is None
    assert count.take() == {"GetObject": 1}
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    await ledger.put(rec)
    assert count.take() == {"PutObject": 1}
    assert (await ledger.get(FP)).create_attempts == 1
    assert count.take() == {"GetObject": 1}
    assert [r.fingerprint for r in await ledger.list()] == [FP]
    assert count.take() == {"ListObjects": 1, "GetObject": 1}

    await read_bytes(ledger.url_of(FP), storage_options=opts)
    assert count.take() == {"GetObject": 1}


async def test_claim_files_cost_one_request_per_step(proxy, bucket) -> None:
    opts = proxy.storage_options
    url = f"s3://{bucket}/out/.kf2v/claims/{FP}.json"
    count = Requests(proxy)
    v1 = await create_exclusive(url, b"mine", storage_options=opts)
    assert count.take() == {"PutObject": 1}
    with pytest.raises(FileExistsError):
        await create_exclusive(url, b"theirs", storage_options=opts)
    assert count.take() == {"PutObject": 1}
    data, v = await read_versioned(url, storage_options=opts)
    assert (data, v) == (b"mine", v1)
    assert count.take() == {"GetObject": 1}
    await replace_if(url, b"renewed", v, storage_options=opts)
    assert count.take() == {"PutObject": 1}


def test_a_reader_of_known_size_sends_no_head(proxy, bucket) -> None:
    fs, path = _s3(proxy, bucket, "out/clip.mp4")
    body = bytes(range(256)) * 64
    fs.pipe_file(path, body)
    count = Requests(proxy)
    with open_object(fs, path, size=len(body)) as f:
        f.seek(len(body) - 16)
        assert f.read() == body[-16:]
    assert "HeadObject" not in count.take()
    with open_object(fs, path) as f:  # size unknown: asked once, then every range checked
        assert f.read(4) == body[:4]
    assert count.take().get("HeadObject") == 1


# ---------------------------------------------------------------------- other backends


@pytest.mark.parametrize("where", ["local", "memory"])
def test_other_backends_give_the_same_answers(tmp_path, where: str) -> None:
    if where == "local":
        root = str(tmp_path)
    else:
        root = f"memory://kf2v-objects-{tmp_path.name}"
    fs, base = open_fs(root)
    assert not is_s3(fs)
    fs.mkdirs(f"{base}/clips", exist_ok=True)
    fs.pipe_file(f"{base}/clips/a.json", json.dumps({"ok": True}).encode())
    missing = f"{base}/clips/none.json"
    assert object_exists(fs, missing) is False
    with pytest.raises(FileNotFoundError):
        read_object(fs, missing)
    with pytest.raises(FileNotFoundError):
        stat_object(fs, missing)
    assert object_exists(fs, f"{base}/clips") is False  # a folder is no file
    assert object_exists(fs, f"{base}/clips/a.json") is True
    assert stat_object(fs, f"{base}/clips/a.json")["size"] == len(b'{"ok": true}')
    assert json.loads(read_object(fs, f"{base}/clips/a.json")) == {"ok": True}
    assert get_object(fs, f"{base}/clips/a.json")[1] is None
    with open_object(fs, f"{base}/clips/a.json", size=12) as f:
        assert f.read() == b'{"ok": true}'
    names, stopped_at = list_files(fs, f"{base}/clips")
    assert [n.rsplit("/", 1)[-1] for n in names] == ["a.json"] and stopped_at is None
    assert list_files(fs, f"{base}/nowhere") == ([], None)
    if where == "memory":
        fsspec.filesystem("memory").rm(base, recursive=True)


async def test_many_ledger_records_are_found_with_one_listing(proxy, bucket) -> None:
    """A batch's plan: the absent records cost nothing more, only the present are read."""
    opts = proxy.storage_options
    ledger = Ledger(f"s3://{bucket}/out", storage_options=opts)
    fps = [f"{i:02x}" * 32 for i in range(6)]
    for fp in fps[:2]:
        rec = LedgerRecord.new(fp)
        rec.begin_create()
        await ledger.put(rec)
    count = Requests(proxy)
    got = await ledger.get_many(reversed(fps))
    assert count.take() == {"ListObjects": 1, "GetObject": 2}  # not 6 GetObject
    assert list(got) == sorted(fps)
    assert [fp for fp, rec in got.items() if rec] == fps[:2]
    assert got[fps[0]].create_attempts == 1 and got[fps[5]] is None


async def test_a_listing_that_stops_early_leaves_the_rest_to_single_reads(
    proxy, bucket, monkeypatch
) -> None:
    from kf2v_tasks.storage import objects

    monkeypatch.setattr(objects, "LIST_PAGE", 2)
    ledger = Ledger(f"s3://{bucket}/out", storage_options=proxy.storage_options)
    fps = [f"{i:02x}" * 32 for i in range(5)]
    for fp in fps[:4]:
        rec = LedgerRecord.new(fp)
        rec.begin_create()
        await ledger.put(rec)
    count = Requests(proxy)
    got = await ledger.get_many(fps)  # 5 wanted: one page of 2 allowed
    # The page says fps[0] and fps[1] exist; fps[2..4] lie beyond it and are read each.
    assert count.take() == {"ListObjects": 1, "GetObject": 5}
    assert [fp for fp, rec in got.items() if rec] == fps[:4] and got[fps[4]] is None


@pytest.mark.parametrize("where", ["local", "memory"])
async def test_many_records_elsewhere_are_read_one_by_one(tmp_path, where: str) -> None:
    root = str(tmp_path) if where == "local" else f"memory://kf2v-many-{tmp_path.name}"
    ledger = Ledger(root)
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    await ledger.put(rec)
    got = await ledger.get_many([FP, "cd" * 32])
    assert got[FP].create_attempts == 1 and got["cd" * 32] is None
    assert await ledger.get_many([]) == {}
