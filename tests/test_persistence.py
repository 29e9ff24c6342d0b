"""save/load: exact round trips, and any damaged or foreign file is refused with
IndexFormatError -- never a crash, never code execution."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import nearq
from conftest import ENCODINGS, METRICS

D = 24


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((400, D)).astype(np.float32)
    q = rng.standard_normal((12, D)).astype(np.float32)
    return x, q


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """(index, path, file bytes) of a flat l2 index saved once for the corruption tests."""
    x, _ = data
    idx = nearq.Index.build(x, threads=1, seed=0)
    path = tmp_path_factory.mktemp("saved") / "index.nearq"
    idx.save(path)
    return idx, path, path.read_bytes()


class FsPath:
    """A minimal os.PathLike that is not a pathlib.Path."""

    def __init__(self, p):
        self.p = str(p)

    def __fspath__(self):
        return self.p


def assert_same_index(a, b, q):
    assert len(a) == len(b)
    assert a.dim == b.dim
    assert a.metric == b.metric
    assert a.encoding == b.encoding
    for k in (1, 10):
        ra, rb = a.search(q, k=k, ef=64), b.search(q, k=k, ef=64)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_array_equal(ra.distances, rb.distances)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip(data, tmp_path, metric, encoding):
    x, q = data
    idx = nearq.Index.build(x, metric=metric, encoding=encoding, threads=1, seed=0)
    path = tmp_path / f"{metric}-{encoding}.nearq"
    idx.save(str(path))
    assert path.stat().st_size > 0
    loaded = nearq.Index.load(str(path))
    assert_same_index(idx, loaded, q)


@pytest.mark.parametrize("keep_vectors", [True, False])
def test_round_trip_sq8_keep_vectors(data, tmp_path, keep_vectors):
    x, q = data
    idx = nearq.Index.build(x, encoding="sq8", keep_vectors=keep_vectors, threads=1)
    idx.save(tmp_path / "i.nearq")
    loaded = nearq.Index.load(tmp_path / "i.nearq")
    assert_same_index(idx, loaded, q)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_pickle_round_trip(data, encoding):
    x, q = data
    idx = nearq.Index.build(x, metric="cosine", encoding=encoding, threads=1)
    assert_same_index(idx, pickle.loads(pickle.dumps(idx)), q)


def test_pathlike_and_overwrite(data, tmp_path):
    x, q = data
    a = nearq.Index.build(x[:100], threads=1)
    b = nearq.Index.build(x, metric="cosine", threads=1)
    target = tmp_path / "i.nearq"
    a.save(FsPath(target))
    b.save(FsPath(target))  # overwriting an existing file replaces it
    loaded = nearq.Index.load(FsPath(target))
    assert_same_index(b, loaded, q)


def test_save_load_save_is_byte_identical(saved, tmp_path):
    idx, path, raw = saved
    again = tmp_path / "again.nearq"
    nearq.Index.load(path).save(again)
    assert again.read_bytes() == raw


@pytest.mark.skipif(os.name != "posix", reason="Windows cannot unlink a file that is open")
def test_loaded_index_is_independent_of_the_file(saved, data, tmp_path):
    # Whether or not load memory-maps, replacing the file must not change a loaded index.
    idx, path, raw = saved
    _, q = data
    copy = tmp_path / "copy.nearq"
    copy.write_bytes(raw)
    loaded = nearq.Index.load(copy)
    before = loaded.search(q, k=5)
    copy.unlink()
    copy.write_bytes(b"\0" * len(raw))
    after = loaded.search(q, k=5)
    np.testing.assert_array_equal(before.ids, after.ids)


# ---------------------------------------------------------------- IO errors


def test_missing_file(tmp_path):
    with pytest.raises(nearq.NearqIOError) as info:
        nearq.Index.load(tmp_path / "does-not-exist.nearq")
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, nearq.NearqError)
    assert "does-not-exist" in str(info.value)


def test_load_a_directory(tmp_path):
    with pytest.raises((nearq.NearqIOError, nearq.IndexFormatError)):
        nearq.Index.load(tmp_path)


def test_unwritable_destination(saved, tmp_path):
    idx, _, _ = saved
    with pytest.raises(nearq.NearqIOError) as info:
        idx.save(tmp_path / "no" / "such" / "dir" / "i.nearq")
    assert isinstance(info.value, OSError)
    with pytest.raises(nearq.NearqIOError):
        idx.save(tmp_path)  # a directory


# ---------------------------------------------------------------- damaged and foreign files


def corrupt_variants(raw: bytes) -> dict[str, bytes]:
    """Named damaged versions of a valid file. Assumes only that the magic is at most 8 bytes."""
    n = len(raw)
    rng = np.random.default_rng(0)
    v: dict[str, bytes] = {}
    cuts = {
        "0": 0,
        "1": 1,
        "4": 4,
        "7": 7,
        "8": 8,
        "12": 12,
        "16": 16,
        "24": 24,
        "32": 32,
        "48": 48,
        "64": 64,
        "half": n // 2,
        "minus_8": n - 8,
        "minus_1": n - 1,
    }
    for name, cut in cuts.items():
        v[f"truncated_at_{name}"] = raw[:cut]
    flips = {"9": 9, "17": 17, "40": 40, "third": n // 3, "middle": n // 2, "last": n - 1}
    for name, pos in flips.items():
        b = bytearray(raw)
        b[pos] ^= 0x5A
        v[f"flipped_byte_{name}"] = bytes(b)
    v["garbage_same_size"] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    v["garbage_small"] = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    v["zeros"] = b"\0" * n
    # keep the magic, then huge header fields / a far-future version number
    v["magic_then_ff"] = raw[:8] + b"\xff" * (n - 8)
    v["magic_then_ff_header_only"] = raw[:8] + b"\xff" * 56 + raw[64:]
    for word in range(8, 64, 4):
        b = bytearray(raw)
        b[word : word + 4] = b"\xff\xff\xff\x7f"
        v[f"header_word_{word}_huge"] = bytes(b)
    v["magic_only"] = raw[:8]
    v["appended_bytes"] = raw + b"extra"
    v["json"] = json.dumps({"dim": 24, "n": 400}).encode()
    v["npy"] = b"\x93NUMPY\x01\x00" + raw[8:]
    v["hdf5_signature"] = b"\x89HDF\r\n\x1a\n" + raw[8:]
    return v


def _variant_ids():
    return list(corrupt_variants(bytes(1000)).keys())


@pytest.mark.parametrize("name", _variant_ids())
def test_damaged_file_raises_index_format_error(saved, tmp_path, name):
    _, _, raw = saved
    content = corrupt_variants(raw)[name]
    p = tmp_path / f"{name}.nearq"
    p.write_bytes(content)
    with pytest.raises(nearq.IndexFormatError) as info:
        nearq.Index.load(p)
    assert isinstance(info.value, ValueError)
    assert str(info.value), "the message must say what is wrong"


def test_every_header_byte_is_checked(saved, tmp_path):
    # Each byte of the first 64 is changed in turn (one at a time); every change must be
    # refused. Where the message mentions a version it is the "too new" case: it must say so.
    _, _, raw = saved
    accepted, vague = [], []
    for pos in range(8, 64):
        b = bytearray(raw)
        b[pos] = 0xFF if b[pos] != 0xFF else 0x00
        p = tmp_path / f"hdr{pos}.nearq"
        p.write_bytes(bytes(b))
        try:
            nearq.Index.load(p)
        except nearq.IndexFormatError as e:
            msg = str(e).lower()
            if "version" in msg and not any(
                w in msg for w in ("newer", "unsupported", "too new", "upgrade")
            ):
                vague.append((pos, msg))
        else:
            accepted.append(pos)
    assert not accepted, f"changed header bytes at offsets {accepted} were accepted"
    assert not vague, vague


def test_damaged_files_do_not_crash_the_process(saved, tmp_path):
    """Load every damaged variant in a child process: a segfault/abort shows up as a signal."""
    _, _, raw = saved
    names = []
    for name, content in corrupt_variants(raw).items():
        (tmp_path / f"{name}.nearq").write_bytes(content)
        names.append(name)
    script = textwrap.dedent(
        """
        import json, sys, nearq
        out = {}
        for path in sys.argv[1:]:
            try:
                nearq.Index.load(path)
                out[path] = "loaded"
            except Exception as e:
                out[path] = type(e).__name__
        print(json.dumps(out))
        """
    )
    paths = [str(tmp_path / f"{n}.nearq") for n in names]
    proc = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout)
    bad = {p: r for p, r in result.items() if r != "IndexFormatError"}
    assert not bad, bad


# ---------------------------------------------------------------- no code execution


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_payload_is_not_executed(saved, tmp_path):
    _, _, raw = saved
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Boom(str(marker)), protocol=pickle.HIGHEST_PROTOCOL)
    for name, content in {
        "pickle": payload,
        "magic_then_pickle": raw[:8] + payload,
        "header_then_pickle": raw[:64] + payload,
    }.items():
        p = tmp_path / f"{name}.nearq"
        p.write_bytes(content)
        with pytest.raises(nearq.IndexFormatError):
            nearq.Index.load(p)
    assert not marker.exists(), "loading executed code from the file"


def test_load_does_not_use_pickle(saved, monkeypatch):
    _, path, _ = saved

    def forbidden(*a, **k):
        raise AssertionError("nearq.Index.load used pickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    loaded = nearq.Index.load(path)
    assert len(loaded) == 400


def test_saved_file_is_not_a_pickle(saved):
    _, _, raw = saved
    assert not raw.startswith(b"\x80"), "file starts like a pickle stream"
    assert b"__reduce__" not in raw and b"builtins" not in raw


@pytest.mark.skipif(os.name != "posix", reason="chmod-based read protection is POSIX-only")
def test_unreadable_file(saved, tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root can read files without read permission")
    _, _, raw = saved
    p = tmp_path / "locked.nearq"
    p.write_bytes(raw)
    p.chmod(0)
    try:
        with pytest.raises(nearq.NearqIOError):
            nearq.Index.load(p)
    finally:
        p.chmod(0o600)


# ---------------------------------------------------------------- documented header layout
# The header layout is documented in rust/nearq-core/src/io.rs: magic[8], version u32 LE @8,
# flags u32 LE @12, payload length u64 LE @16, payload, CRC-32 (IEEE) of the payload.

HEADER = 24


def with_crc(raw: bytes) -> bytes:
    """Recomputes the trailing CRC-32 so that only the semantic checks can catch a change."""
    payload = raw[HEADER:-4]
    return raw[:-4] + zlib.crc32(payload).to_bytes(4, "little")


def test_header_layout_is_as_documented(saved):
    _, _, raw = saved
    assert raw[:8] == b"NEARQIX\0"
    assert int.from_bytes(raw[16:24], "little") == len(raw) - HEADER - 4
    assert with_crc(raw) == raw


@pytest.mark.parametrize("version", ["next", 0xFFFFFFFF])
def test_future_version_is_refused_and_named(saved, tmp_path, version):
    _, _, raw = saved
    current = int.from_bytes(raw[8:12], "little")
    v = current + 1 if version == "next" else version
    p = tmp_path / "future.nearq"
    p.write_bytes(raw[:8] + v.to_bytes(4, "little") + raw[12:])
    with pytest.raises(nearq.IndexFormatError, match=r"(?i)version"):
        nearq.Index.load(p)


@pytest.mark.parametrize("length", [0, 1, 2**31, 2**63, 2**64 - 1])
def test_wrong_payload_length_is_refused(saved, tmp_path, length):
    _, _, raw = saved
    p = tmp_path / "len.nearq"
    p.write_bytes(raw[:16] + length.to_bytes(8, "little") + raw[24:])
    with pytest.raises(nearq.IndexFormatError):
        nearq.Index.load(p)


def test_unknown_flags_are_refused(saved, tmp_path):
    _, _, raw = saved
    p = tmp_path / "flags.nearq"
    p.write_bytes(raw[:12] + (1).to_bytes(4, "little") + raw[16:])
    with pytest.raises(nearq.IndexFormatError):
        nearq.Index.load(p)


def test_payload_mutations_with_valid_checksum_never_crash(saved, tmp_path):
    """Hostile payloads that pass the checksum: each must load (and then search safely) or
    raise IndexFormatError. Run in a child so that a crash, abort or hang fails the test."""
    _, _, raw = saved
    rng = np.random.default_rng(11)
    paths = []
    n_payload = len(raw) - HEADER - 4
    for i in range(120):
        b = bytearray(raw)
        if i < 60:  # the payload's leading fields (counts, dims, params) get extreme values
            pos = HEADER + 4 * (i % 30) if i < 30 else HEADER + (i - 30)
        else:
            pos = HEADER + int(rng.integers(0, n_payload - 4))
        b[pos : pos + 4] = [
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00\x00",
            b"\xff\xff\xff\x7f",
            b"\x00\x00\x80\x7f",
        ][i % 4]
        p = tmp_path / f"m{i}.nearq"
        p.write_bytes(with_crc(bytes(b)))
        paths.append(str(p))
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np, nearq
        q = np.random.default_rng(0).standard_normal((3, %d)).astype(np.float32)
        out = {}
        for path in sys.argv[1:]:
            try:
                idx = nearq.Index.load(path)
            except Exception as e:
                out[path] = type(e).__name__
                continue
            try:
                if idx.dim == q.shape[1]:
                    res = idx.search(q, k=5)
                    assert res.ids.shape == (3, 5)
                    assert ((res.ids >= -1) & (res.ids < len(idx))).all()
                out[path] = "loaded"
            except Exception as e:
                out[path] = "search:" + type(e).__name__
        print(json.dumps(out))
        """
        % D
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout)
    bad = {
        os.path.basename(p): r for p, r in result.items() if r not in ("IndexFormatError", "loaded")
    }
    assert not bad, bad
