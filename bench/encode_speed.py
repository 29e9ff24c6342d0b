"""Encoding throughput of nearq's encodings next to faiss PQ training + encoding, on the same
real vectors and thread count.

    python bench/encode_speed.py --data ../shared/data/pypi-minilm-384-angular-50k.hdf5 --threads 1

Writes the (normalised, cosine) train vectors to a raw f32 file, runs the Rust example
`encode_speed` on it, then times faiss ProductQuantizer (m=96 and m=192, 8 and 4 bits,
25 k-means iterations as nearq's default) train + compute_codes.

PQ training A/B against faiss (nearq and faiss alternate, the minimum over rounds is kept,
with the mean squared reconstruction error of both):

    python bench/encode_speed.py --data ../shared/data/pypi-minilm-384-angular-50k.hdf5 \
        --threads 1 --pq-only --rounds 3 [--n 10000]

Where there is no cargo (the device machine), pass a prebuilt example with `--bin` (e.g.
`target/release/examples/encode_speed`) and, instead of the HDF5 file, raw row-major float16 or
float32 vectors with `--data X.f16 --dim 384` (or `X.f32`); `--no-faiss` times nearq alone.

TurboQuant against faiss PQ at equal code size (`--tq-bits 2,4`: TurboQuant's b-bit codes hold
d·b/8 bytes of indices, plus a 4-byte norm, and each is compared with the two faiss PQ
configurations of d·b/8 bytes, m = d·b/8 with 8 bits and m = d·b/4 with 4 bits; nearq runs only
its TurboQuant encodings and faiss only those configurations, alternating, minimum time over
rounds, ratios printed at the end):

    python bench/encode_speed.py --data ../shared/data/pypi-minilm-384-angular-50k.hdf5 \
        --threads 1 --tq-bits 2,4 --rounds 3
"""
from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import load_dataset  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PQ = ((96, 8), (192, 4))


def faiss_pq(x, m, bits, threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    pq = faiss.ProductQuantizer(x.shape[1], m, bits)
    pq.cp.niter = 25
    t0 = time.perf_counter()
    pq.train(x)
    t1 = time.perf_counter()
    codes = pq.compute_codes(x)
    t2 = time.perf_counter()
    mse = float(((x - pq.decode(codes)) ** 2).sum(1).mean())
    return t1 - t0, t2 - t1, codes.shape[1], mse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-nearq", action="store_true")
    ap.add_argument("--pq-only", action="store_true", help="only the PQ configurations")
    ap.add_argument("--rounds", type=int, default=1, help="alternate nearq and faiss this many times")
    ap.add_argument("--n", type=int, default=0, help="use the first N train vectors")
    ap.add_argument("--bin", help="prebuilt encode_speed example (default: cargo run)")
    ap.add_argument("--dim", type=int, default=0, help="dimension of a raw .f16 / .f32 --data file")
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--faiss-pq", default="",
                    help="extra faiss PQ configurations timed after the others, e.g. '192x8' "
                         "(the code size of 4-bit TurboQuant at d = 384)")
    ap.add_argument("--tq-bits", default="",
                    help="compare TurboQuant at these bit widths (e.g. '2,4') with faiss PQ of "
                         "the same code size; times only those encodings")
    a = ap.parse_args()
    extra = [tuple(int(v) for v in c.split("x")) for c in a.faiss_pq.split(",") if c]
    tq_bits = [int(b) for b in a.tq_bits.split(",") if b]
    if a.data.endswith((".f16", ".f32")):
        dt = np.float16 if a.data.endswith(".f16") else np.float32
        x = np.fromfile(a.data, dtype=dt).reshape(-1, a.dim).astype(np.float32)
    else:
        x = load_dataset(a.data)["train"]
    if a.n:
        x = x[: a.n]
    x = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)
    n, d = x.shape
    best = {}
    # TurboQuant b bits -> the faiss PQ configurations with as many code bytes (d·b/8).
    equal = {b: [(d * b // 8, 8), (d * b // 4, 4)] for b in tq_bits}
    for b, cfgs in equal.items():
        for m, nb in cfgs:
            if d % m:
                sys.exit(f"--tq-bits {b}: faiss PQ needs m = {m} to divide d = {d}")
    faiss_cfgs = (tuple(dict.fromkeys(c for cs in equal.values() for c in cs)) + tuple(extra)
                  if tq_bits else PQ + tuple(extra))
    tq_total = {}  # (bits, variant) -> min train + encode seconds
    with tempfile.TemporaryDirectory() as tmp:
        f = pathlib.Path(tmp) / "x.f32"
        x.tofile(f)
        if not a.no_nearq and not a.bin:
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "nearq-core", "--example",
                            "encode_speed"], cwd=ROOT, check=True)
        for r in range(a.rounds):
            if not a.no_nearq:
                cmd = [a.bin] if a.bin else ["cargo", "run", "--release", "-q", "-p", "nearq-core",
                                             "--example", "encode_speed", "--"]
                cmd += [str(f), str(d), str(a.threads)]
                if a.pq_only:
                    cmd.append("pq-")
                elif tq_bits:
                    cmd.append("turboquant")
                out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
                print(out, end="", flush=True)
                for line in out.splitlines():
                    m = re.match(r"(pq-m(\d+)-(\d+)bit)\s+train\s+([\d.]+)s.*?(?:mse ([\d.]+))?$", line)
                    if m:
                        key = ("nearq", int(m[2]), int(m[3]))
                        t, mse = float(m[4]), float(m[5]) if m[5] else float("nan")
                        best[key] = min(best.get(key, (t, mse)), (t, mse))
                    m = re.match(r"turboquant-(\d+)-(\w+)\s+train\s+([\d.]+)s\s+encode\s+([\d.]+)s", line)
                    if m:
                        key = (int(m[1]), m[2])
                        tq_total[key] = min(tq_total.get(key, float("inf")), float(m[3]) + float(m[4]))
            for m, bits in [] if a.no_faiss else faiss_cfgs:
                t_train, t_enc, cs, mse = faiss_pq(x, m, bits, a.threads)
                print(f"faiss-pq-m{m}-{bits}bit     train {t_train:8.3f}s  encode {t_enc:8.3f}s  "
                      f"total {n / (t_train + t_enc):12.0f} vec/s  encode-only {n / t_enc:12.0f} vec/s  "
                      f"({cs} B/vec)  mse {mse:.6f}", flush=True)
                key = ("faiss", m, bits)
                best[key] = min(best.get(key, (t_train, mse)), (t_train, mse))
                key = ("faiss-total", m, bits)
                best[key] = min(best.get(key, float("inf")), t_train + t_enc)
    if tq_bits:
        print(f"\nTurboQuant vs faiss PQ train + encode at equal code size, {n} x {d}, "
              f"{a.threads} thread(s), min over {a.rounds} round(s):")
        print(f"{'turboquant':<18}{'vec/s':>10}  {'faiss PQ':<12}{'vec/s':>10}{'ratio':>8}")
        for b in tq_bits:
            for (bb, variant), t in sorted(tq_total.items()):
                if bb != b:
                    continue
                for m, nb in equal[b]:
                    tf = best.get(("faiss-total", m, nb))
                    cell = (f"{n / tf:>10.0f}{tf / t:>8.1f}x" if tf else f"{'-':>10}{'-':>8}")
                    print(f"{f'{b}-bit {variant} ({d * b // 8} B)':<18}{n / t:>10.0f}  "
                          f"{f'm{m}x{nb}bit':<12}" + cell)
        return
    print(f"\nPQ training, {n} x {d}, {a.threads} thread(s), min over {a.rounds} round(s):")
    print(f"{'config':<14}{'nearq s':>10}{'faiss s':>10}{'faiss/nearq':>13}{'nearq mse':>12}{'faiss mse':>12}{'mse ratio':>11}")
    for m, bits in PQ:
        fa = best.get(("faiss", m, bits))
        nq = best.get(("nearq", m, bits))
        if not (fa or nq):
            continue
        if not (fa and nq):
            t, e = fa or nq
            print(f"{f'm{m}x{bits}bit':<14}" + (f"{t:>10.3f}{'-':>10}" if nq else f"{'-':>10}{t:>10.3f}")
                  + f"{'-':>13}" + (f"{e:>12.6f}{'-':>12}" if nq else f"{'-':>12}{e:>12.6f}"))
            continue
        print(f"{f'm{m}x{bits}bit':<14}{nq[0]:>10.3f}{fa[0]:>10.3f}{fa[0] / nq[0]:>13.2f}"
              f"{nq[1]:>12.6f}{fa[1]:>12.6f}{nq[1] / fa[1]:>11.4f}")


if __name__ == "__main__":
    main()
