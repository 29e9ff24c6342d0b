"""Encoding throughput of nearq's encodings next to faiss PQ training + encoding, on the same
real vectors and thread count.

    python bench/encode_speed.py --data ../shared/data/pypi-minilm-384-angular-50k.hdf5 --threads 1

Writes the (normalised, cosine) train vectors to a raw f32 file, runs the Rust example
`encode_speed` on it, then times faiss ProductQuantizer (m=96 and m=192, 8 and 4 bits,
25 k-means iterations as nearq's default) train + compute_codes.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import load_dataset  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-nearq", action="store_true")
    a = ap.parse_args()
    x = load_dataset(a.data)["train"]
    x = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)
    n, d = x.shape
    if not a.no_nearq:
        with tempfile.TemporaryDirectory() as tmp:
            f = pathlib.Path(tmp) / "x.f32"
            x.tofile(f)
            subprocess.run(["cargo", "run", "--release", "-q", "-p", "nearq-core", "--example",
                            "encode_speed", "--", str(f), str(d), str(a.threads)], cwd=ROOT, check=True)
    import faiss

    faiss.omp_set_num_threads(a.threads)
    for m, bits in ((96, 8), (192, 4)):
        pq = faiss.ProductQuantizer(d, m, bits)
        pq.cp.niter = 25
        t0 = time.perf_counter()
        pq.train(x)
        t1 = time.perf_counter()
        codes = pq.compute_codes(x)
        t2 = time.perf_counter()
        print(f"faiss-pq-m{m}-{bits}bit     train {t1 - t0:8.3f}s  encode {t2 - t1:8.3f}s  "
              f"total {n / (t2 - t0):12.0f} vec/s  encode-only {n / (t2 - t1):12.0f} vec/s  ({codes.shape[1]} B/vec)")


if __name__ == "__main__":
    main()
