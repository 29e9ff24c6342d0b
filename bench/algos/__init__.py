"""Registry of benchmark configurations.

Each entry: name -> dict(module, cls, params, query_args, family).  ``--algos`` accepts
entry names or family names (e.g. 'nearq' selects every nearq-* entry, 'faiss-hnsw'
selects faiss-hnsw-M32 and faiss-hnsw-M16).
"""

# Beam widths, the same grid for every graph index. Steps of 2 to 64 (3-5% apart from 40 up),
# then of 8 to 96: a configuration is credited with the cheapest point that reaches the recall
# target, so a coarse grid hands whoever lands just above a point up to a step's worth of
# speed (the earlier grids went 40, 48, 56, 64, then 40, 44, 48, ..., 64: a step of 4 at 44
# is 9% of a beam of 44).
EF = list(range(10, 66, 2)) + [72, 80, 88, 96, 112, 128, 160, 192, 256, 384, 512, 768]
EF_QUICK = [16, 32, 64, 128, 256, 512]
NPROBE = [(1, 4), (2, 4), (4, 4), (8, 4), (12, 6), (16, 8), (24, 8), (32, 10), (48, 10), (64, 16), (128, 16),
          (192, 16), (256, 20), (384, 20)]
NPROBE_PLAIN = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384]


def _e(family, module, cls, params, query_args=EF, quick_args=EF_QUICK):
    return dict(family=family, module=module, cls=cls, params=params, query_args=query_args,
                quick_args=quick_args)


CONFIGS = {
    # --- nearq ---------------------------------------------------------------
    "nearq-flat-R32": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="flat", degree=32, build_ef=128)),
    "nearq-flat-R32-bef200": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="flat", degree=32, build_ef=200)),
    "nearq-sq8-R32": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="sq8", degree=32, build_ef=128)),
    "nearq-flat-R48": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="flat", degree=48, build_ef=200)),
    "nearq-rabitq4-keep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, degree=32, build_ef=128, rerank="ef", quantized_graph=False)),
    "nearq-rabitq8-nokeep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=8, keep_vectors=False, degree=32, build_ef=128, rerank="ef")),
    "nearq-rabitq8-nokeep-r30": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=8, keep_vectors=False, degree=32, build_ef=128)),
    "nearq-rabitq4-mmap-r30": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, mmap=True, degree=32, build_ef=128, quantized_graph=False)),
    "nearq-sq8-nokeep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="sq8", keep_vectors=False, degree=32, build_ef=128)),
    "nearq-lvq4x8-nokeep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="lvq", bits=(4, 8), keep_vectors=False, degree=32, build_ef=128)),
    "nearq-lvq8-nokeep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="lvq", bits=8, keep_vectors=False, degree=32, build_ef=128)),
    "nearq-tq4-keep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="turboquant", bits=4, degree=32, build_ef=128)),
    "nearq-pq96-keep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=8, subspaces=96, degree=32, build_ef=128)),
    "nearq-rabitq4-mmap": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, mmap=True, degree=32, build_ef=128, rerank="ef", quantized_graph=False)),
    "nearq-tq4-mmap": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="turboquant", bits=4, mmap=True, degree=32, build_ef=128)),
    "nearq-tq4-nokeep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="turboquant", bits=4, keep_vectors=False, degree=32, build_ef=128)),
    # TurboQuant 4-bit on a denser (degree 48) or more carefully built (build_ef 200) graph.
    "nearq-tq4-mmap-d48": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="turboquant", bits=4, mmap=True, degree=48, build_ef=128)),
    "nearq-tq4-mmap-bef200": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="turboquant", bits=4, mmap=True, degree=32, build_ef=200)),
    "nearq-tq4-nokeep-d48": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="turboquant", bits=4, keep_vectors=False, degree=48, build_ef=128)),
    "nearq-pq4-mmap": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=192, mmap=True, degree=32, build_ef=128)),
    # 4-bit PQ: graph traversal through FastScan (default) or, "-float", the float LUT per code.
    "nearq-pq4-mmap-float": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=192, mmap=True, degree=32, build_ef=128, pq_fastscan=False)),
    "nearq-pq4m96-mmap": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=96, mmap=True, degree=32, build_ef=128)),
    "nearq-pq4m128-mmap": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=128, mmap=True, degree=32, build_ef=128)),
    "nearq-pq4m96-mmap-rr": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=96, mmap=True, degree=32, build_ef=128, rerank="ef")),
    "nearq-pq4m128-mmap-rr": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=128, mmap=True, degree=32, build_ef=128, rerank="ef")),
    "nearq-pq4-mmap-rr": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=192, mmap=True, degree=32, build_ef=128, rerank="ef")),
    "nearq-pq4m96-mmap-float": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=96, mmap=True, degree=32, build_ef=128, pq_fastscan=False)),
    # 4-bit PQ with neighbour-code rows (quantized_graph=True): each node keeps its neighbours' codes packed in FastScan blocks.
    "nearq-pq4-mmap-qg": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=192, mmap=True, degree=32, build_ef=128, quantized_graph=True)),
    "nearq-pq4m128-mmap-qg": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=128, mmap=True, degree=32, build_ef=128, quantized_graph=True)),
    "nearq-pq4m96-mmap-qg": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=96, mmap=True, degree=32, build_ef=128, quantized_graph=True)),
    "nearq-pq96-mmap": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=8, subspaces=96, mmap=True, degree=32, build_ef=128)),
    "nearq-sq8-mmap": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="sq8", mmap=True, degree=32, build_ef=128)),
    "nearq-saq4-nokeep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=4, keep_vectors=False, degree=32, build_ef=128)),
    "nearq-saq8-nokeep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=32, build_ef=128)),
    "nearq-saq6-nokeep": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=6, keep_vectors=False, degree=32, build_ef=128)),
    # SAQ with the query projection in half precision (NEARQ_SAQ_HALF_QUERIES, read when the
    # encoder is trained or loaded). The default since the sixth session, so these equal the
    # plain configurations; kept so that earlier result files name what they ran.
    "nearq-saq8-nokeep-f16": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=32, build_ef=128, env={"NEARQ_SAQ_HALF_QUERIES": "1"})),
    "nearq-saq8-nokeep-avx2": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=32, build_ef=128, simd="avx2")),
    "nearq-saq8-nokeep-d48-f16": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=48, build_ef=128, env={"NEARQ_SAQ_HALF_QUERIES": "1"})),
    "nearq-saq8-nokeep-d64-f16": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=64, build_ef=128, env={"NEARQ_SAQ_HALF_QUERIES": "1"})),
    "nearq-saq8-nokeep-d48-b200-f16": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=48, build_ef=200, env={"NEARQ_SAQ_HALF_QUERIES": "1"})),
    "nearq-saq8-nokeep-d64-b200-f16": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=64, build_ef=200, env={"NEARQ_SAQ_HALF_QUERIES": "1"})),
    "nearq-saq8-nokeep-d48-b300-f16": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=48, build_ef=300, env={"NEARQ_SAQ_HALF_QUERIES": "1"})),
    "nearq-saq8-nokeep-d64": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=64, build_ef=128)),
    "nearq-saq8-nokeep-d48": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=8, keep_vectors=False, degree=48, build_ef=128)),
    "nearq-saq6-nokeep-d48": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=6, keep_vectors=False, degree=48, build_ef=128)),
    "nearq-pq4-mmap-d48": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=192, mmap=True, degree=48, build_ef=128)),
    "nearq-pq4-mmap-qg-d48": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="pq", bits=4, subspaces=192, mmap=True, degree=48, build_ef=128, quantized_graph=True)),
    # The quantized graph's rows as in earlier releases, for A/B runs (switches read when the
    # rows are built): f32 vectors (NEARQ_QG_HALF=0) instead of the default f16, and 1-bit
    # neighbour codes (NEARQ_QG_BITS=1) instead of the default 2 bits.
    "nearq-rabitq-qg-b200-f32rows": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, degree=32, build_ef=200, env={"NEARQ_QG_HALF": "0"})),
    "nearq-rabitq-qg-b200-1bit": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, degree=32, build_ef=200, env={"NEARQ_QG_BITS": "1"})),
    "nearq-rabitq-qg-b200-1bit-f32rows": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, degree=32, build_ef=200, env={"NEARQ_QG_BITS": "1", "NEARQ_QG_HALF": "0"})),
    "nearq-rabitq-qg-d64-b200": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, degree=64, build_ef=200)),
    "nearq-rabitq-qg-d48-b200": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, degree=48, build_ef=200)),
    "nearq-saq4-mmap": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="saq", bits=4, mmap=True, degree=32, build_ef=128)),
    "nearq-qg-R32": _e("nearq", "nearq_qg_adapter", "NearQG", dict(degree=32, build_ef=128)),
    # The same with the kernels capped at AVX2 (NEARQ_SIMD), to compare dispatch levels in one run.
    "nearq-qg-R32-avx2": _e("nearq", "nearq_qg_adapter", "NearQG", dict(degree=32, build_ef=128, simd="avx2")),
    "nearq-lvq4x8-nokeep-avx2": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="lvq", bits=(4, 8), keep_vectors=False, degree=32, build_ef=128, simd="avx2")),
    "nearq-tq4-mmap-avx2": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="turboquant", bits=4, mmap=True, degree=32, build_ef=128, simd="avx2")),
    "nearq-lvq4x8-nokeep-nohp": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="lvq", bits=(4, 8), keep_vectors=False, degree=32, build_ef=128, hugepages=False)),
    "nearq-lvq4x8-nokeep-a12": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="lvq", bits=(4, 8), keep_vectors=False, degree=32, build_ef=128, alpha=1.2)),
    "nearq-sq8-nokeep-avx2": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="sq8", keep_vectors=False, degree=32, build_ef=128, simd="avx2")),
    # the same design through the Index API (rabitq with float vectors kept: quantized graph)
    "nearq-rabitq-qg": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, degree=32, build_ef=128)),
    # the build beam of SymphonyQG's configuration (efConstruction=200)
    "nearq-rabitq-qg-b200": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="rabitq", bits=4, degree=32, build_ef=200)),
    "nearq-flat-R64": _e("nearq", "nearq_adapter", "NearQ", dict(encoding="flat", degree=64, build_ef=200)),
    # --- faiss -----------------------------------------------------------------
    "faiss-hnsw-M32": _e("faiss-hnsw", "faiss_adapters", "FaissHNSWFlat", dict(M=32, efConstruction=200)),
    "faiss-hnsw-M16": _e("faiss-hnsw", "faiss_adapters", "FaissHNSWFlat", dict(M=16, efConstruction=200)),
    "faiss-hnswpq-M32-refine": _e("faiss-hnswpq", "faiss_adapters", "FaissHNSWPQ",
                                  dict(M=32, efConstruction=200, pq_m=96, k_factor=4)),
    "faiss-ivfpq-fs-refine": _e("faiss-ivfpqfs", "faiss_adapters", "FaissIVFFactory",
                                dict(factory="IVF{nlist},PQ{m4}x4fs,RFlat"), NPROBE, NPROBE[::2]),
    "faiss-ivf-rabitq-refine": _e("faiss-rabitq", "faiss_adapters", "FaissIVFFactory",
                                  dict(factory="IVF{nlist},RaBitQ,RFlat", qb=8), NPROBE, NPROBE[::2]),
    "faiss-ivf-rabitq4": _e("faiss-rabitq", "faiss_adapters", "FaissIVFFactory",
                            dict(factory="IVF{nlist},RaBitQ4", qb=8), NPROBE_PLAIN, NPROBE_PLAIN[::2]),
    "faiss-rabitq-refine": _e("faiss-rabitq", "faiss_adapters", "FaissRaBitQFlat", dict(),
                              [2, 4, 8, 16, 32, 64], [4, 16, 64]),
    # --- hnswlib / usearch / svs ------------------------------------------------
    "hnswlib-M16": _e("hnswlib", "hnswlib_adapter", "Hnswlib", dict(M=16, efConstruction=200)),
    "hnswlib-M32": _e("hnswlib", "hnswlib_adapter", "Hnswlib", dict(M=32, efConstruction=200)),
    "usearch-f32-M32": _e("usearch", "usearch_adapter", "USearch", dict(M=32, efConstruction=200, dtype="f32")),
    "usearch-f16-M32": _e("usearch", "usearch_adapter", "USearch", dict(M=32, efConstruction=200, dtype="f16")),
    "usearch-i8-M32": _e("usearch", "usearch_adapter", "USearch", dict(M=32, efConstruction=200, dtype="i8")),
    "svs-vamana-f32-R32": _e("svs", "svs_adapter", "SVSVamana", dict(R=32, L=128, dtype="f32")),
    "svs-vamana-f16-R32": _e("svs", "svs_adapter", "SVSVamana", dict(R=32, L=128, dtype="f16")),
    # LVQ: Intel CPUs only (SVS refuses others).
    "svs-lvq4x8-R32": _e("svs", "svs_adapter", "SVSVamana", dict(R=32, L=128, dtype="lvq4x8")),
    "svs-lvq4x8-R32-cap2": _e("svs", "svs_adapter", "SVSVamana", dict(R=32, L=128, dtype="lvq4x8", capacity=2)),
    "svs-lvq8-R32": _e("svs", "svs_adapter", "SVSVamana", dict(R=32, L=128, dtype="lvq8")),
    "svs-lvq4x8-R32-a11": _e("svs", "svs_adapter", "SVSVamana", dict(R=32, L=128, dtype="lvq4x8", alpha=1.1)),
    "svs-vamana-f16-R32-a11": _e("svs", "svs_adapter", "SVSVamana", dict(R=32, L=128, dtype="f16", alpha=1.1)),
    "svs-lvq4x8-R64": _e("svs", "svs_adapter", "SVSVamana", dict(R=64, L=200, dtype="lvq4x8")),
    # --- RaBitQ library -----------------------------------------------------------
    "rabitqlib-symqg-R32": _e("rabitqlib", "rabitqlib_adapter", "RQSymqg", dict(degree=32, efConstruction=200)),
    "rabitqlib-symqg-R64": _e("rabitqlib", "rabitqlib_adapter", "RQSymqg", dict(degree=64, efConstruction=200)),
    # Second and third builds of the same configuration (its build is randomised: one paired run
    # then compares against several SymphonyQG graphs, whose beam for recall 0.95 varies).
    "rabitqlib-symqg-R32-b": _e("rabitqlib", "rabitqlib_adapter", "RQSymqg", dict(degree=32, efConstruction=200)),
    "rabitqlib-symqg-R32-c": _e("rabitqlib", "rabitqlib_adapter", "RQSymqg", dict(degree=32, efConstruction=200)),
    "rabitqlib-hnsw-4bit": _e("rabitqlib", "rabitqlib_adapter", "RQHnsw", dict(M=16, efConstruction=200, bits=4)),
    "rabitqlib-hnsw-8bit": _e("rabitqlib", "rabitqlib_adapter", "RQHnsw", dict(M=16, efConstruction=200, bits=8)),
    "rabitqlib-ivf-4bit": _e("rabitqlib", "rabitqlib_adapter", "RQIvf", dict(bits=4), NPROBE_PLAIN, NPROBE_PLAIN[::2]),
    "rabitqlib-ivf-8bit": _e("rabitqlib", "rabitqlib_adapter", "RQIvf", dict(bits=8), NPROBE_PLAIN, NPROBE_PLAIN[::2]),
    # --- turbovec (flat quantised scan: one point per config) -----------------------
    "turbovec-4bit": _e("turbovec", "turbovec_adapter", "TurboVec", dict(bits=4), [None], [None]),
    "turbovec-2bit": _e("turbovec", "turbovec_adapter", "TurboVec", dict(bits=2), [None], [None]),
    # --- exact ---------------------------------------------------------------------
    "exact-numpy": _e("exact", "exact_adapter", "NumpyExact", dict(), [None], [None]),
    "exact-faiss-flat": _e("exact", "faiss_adapters", "FaissFlat", dict(), [None], [None]),
}

DEFAULT = [
    "nearq-flat-R32", "nearq-sq8-R32", "nearq-flat-R48",
    "faiss-hnsw-M32", "faiss-hnsw-M16", "faiss-hnswpq-M32-refine", "faiss-ivfpq-fs-refine",
    "faiss-ivf-rabitq-refine",
    "hnswlib-M16", "usearch-f32-M32", "usearch-i8-M32", "svs-vamana-f32-R32", "svs-vamana-f16-R32",
    "nearq-rabitq-qg", "rabitqlib-symqg-R32", "rabitqlib-hnsw-4bit", "rabitqlib-hnsw-8bit", "rabitqlib-ivf-4bit",
    "turbovec-4bit", "exact-numpy",
]


def select(spec):
    if not spec:
        return list(DEFAULT)
    if spec == "all":
        return list(CONFIGS)
    out = []
    for tok in [t.strip() for t in spec.split(",") if t.strip()]:
        if tok in CONFIGS:
            out.append(tok)
            continue
        fam = [n for n, c in CONFIGS.items() if c["family"] == tok or n.startswith(tok + "-")]
        fam = [n for n in fam if n in DEFAULT] or fam
        if not fam:
            raise SystemExit(f"unknown algorithm '{tok}'; known: {', '.join(CONFIGS)}")
        out.extend(fam)
    return list(dict.fromkeys(out))


def load(name):
    import importlib

    c = CONFIGS[name]
    mod = importlib.import_module(f"algos.{c['module']}")
    return getattr(mod, c["cls"]), c
