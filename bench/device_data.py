"""Carry an ann-benchmarks HDF5 file to the offline device machine within its 64 MiB limit.

    python bench/device_data.py pack FILE.hdf5 DIR      # here: DIR/train.npy.xz + DIR/test.npy (float16)
    python bench/device_data.py unpack DIR OUT.hdf5     # there: float32 HDF5, exact ground truth recomputed
    python bench/device_data.py raw DIR OUTDIR          # there: OUTDIR/m.hdf5 as `unpack`, and raw
                                                        # files for the Rust examples (below)

`raw` writes OUTDIR/tr.f32 (train), OUTDIR/te.f32 (the first 1000 queries) and OUTDIR/gt.i32
(their 10 nearest ids), little-endian, for `examples/qg_ab`, `qg_bench` and `qg_path`.

float16 keeps ~3 significant digits of each component; the ground truth of the unpacked file is
recomputed exactly (float64) on the unpacked vectors, so recall is measured correctly for them.
"""

import lzma
import sys
from pathlib import Path

import numpy as np


def pack(src: str, dst: str) -> None:
    import h5py

    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(src, "r") as f:
        train, test = f["train"][:].astype(np.float16), f["test"][:].astype(np.float16)
        metric = f.attrs["distance"]
    with lzma.open(out / "train.npy.xz", "wb", preset=6) as z:
        np.save(z, train)
    np.save(out / "test.npy", test)
    (out / "distance.txt").write_text(str(metric))


def unpack(src: str, dst: str, k: int = 100) -> None:
    import h5py

    d = Path(src)
    with lzma.open(d / "train.npy.xz", "rb") as z:
        train = np.load(z).astype(np.float32)
    test = np.load(d / "test.npy").astype(np.float32)
    metric = (d / "distance.txt").read_text().strip()
    x, q = train.astype(np.float64), test.astype(np.float64)
    if metric == "angular":
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        dist = 1.0 - q @ x.T
    else:
        dist = (q * q).sum(1)[:, None] - 2.0 * q @ x.T + (x * x).sum(1)[None, :]
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
    with h5py.File(dst, "w") as f:
        f["train"], f["test"] = train, test
        f["neighbors"] = ids.astype(np.int32)
        f["distances"] = np.take_along_axis(dist, ids, axis=1).astype(np.float32)
        f.attrs["distance"] = metric
        f.attrs["dimension"] = train.shape[1]


def raw(src: str, dst: str) -> None:
    import h5py

    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    unpack(src, str(out / "m.hdf5"))
    with h5py.File(out / "m.hdf5", "r") as f:
        np.ascontiguousarray(f["train"][:], dtype=np.float32).tofile(out / "tr.f32")
        np.ascontiguousarray(f["test"][:1000], dtype=np.float32).tofile(out / "te.f32")
        np.ascontiguousarray(f["neighbors"][:1000, :10], dtype=np.int32).tofile(out / "gt.i32")


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack, "raw": raw}[sys.argv[1]](*sys.argv[2:4])
