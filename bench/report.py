"""Tables and plots from a results.json document (also usable standalone:
python bench/report.py bench/results/NAME/results.json)."""
from __future__ import annotations

import json
import os
import sys

THRESHOLDS = (0.90, 0.95, 0.99)
REF_FAISS = ["faiss-hnsw-M32"]
REF_HNSWLIB = ["hnswlib-M16", "hnswlib-M32"]


def best_qps(points, algo, threads, mode, thr, key="qps"):
    q = [p.get(key) or 0 for p in points if p["algo"] == algo and p["threads"] == threads and p["mode"] == mode
         and p["recall"] >= thr]
    return max(q) if q else None


def _fmt_qps(v):
    return "–" if v is None else f"{v:,.0f}"


def _ratio(a, b):
    return "–" if a is None or b is None else f"{a / b:.2f}x"


def table_md(doc):
    pts = doc["points"]
    cfg = doc["configs"]
    m = doc["meta"]
    env = doc.get("environment", {})
    lines = [f"# {doc['dataset']}: {m['n_train']} x {m['dim']} ({m['metric']}), {m['n_test']} queries, k=10", "",
             f"CPU: {env.get('cpu', '?')} ({env.get('cpu_count')} logical), Python {env.get('python')}; "
             f"versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}", "",
             "QPS = best of repeats; `single` = one query per call (ann-benchmarks style), `batch` = all "
             "queries in one call. Build uses --build-threads. Ratios are QPS ratios at the same recall "
             "threshold (0.90 / 0.95 / 0.99).", ""]
    groups = sorted({(p["threads"], p["mode"]) for p in pts}, key=lambda g: (g[1] != "single", g[0]))
    tables = [(t, m, "qps") for t, m in groups]
    # CPU-time QPS (queries / process CPU seconds) is robust to a busy shared machine;
    # meaningful for 1 thread only.
    tables += [(t, m, "qps_cpu") for t, m in groups if t == 1 and all("qps_cpu" in p for p in pts)]
    for threads, mode, key in tables:
        algos_here = list(dict.fromkeys(p["algo"] for p in pts if p["threads"] == threads and p["mode"] == mode))
        ref_f = next((r for r in REF_FAISS if r in algos_here), None)
        ref_h = next((r for r in REF_HNSWLIB if r in algos_here), None)
        title = "wall-clock QPS" if key == "qps" else "CPU-time QPS (n / process CPU s)"
        lines += [f"## threads={threads}, {mode}: {title}", "",
                  "| algo | build s | B/vec | max recall | QPS@0.90 | QPS@0.95 | QPS@0.99 | "
                  f"vs {ref_f or 'faiss-hnsw-M32'} | vs {ref_h or 'hnswlib'} |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
        rows = []
        for al in algos_here:
            qs = [best_qps(pts, al, threads, mode, t, key) for t in THRESHOLDS]
            rf = [best_qps(pts, ref_f, threads, mode, t, key) if ref_f else None for t in THRESHOLDS]
            rh = [best_qps(pts, ref_h, threads, mode, t, key) if ref_h else None for t in THRESHOLDS]
            maxr = max(p["recall"] for p in pts if p["algo"] == al and p["threads"] == threads and p["mode"] == mode)
            c = cfg.get(al, {})
            rows.append((qs[1] or 0, f"| {al} | {c.get('build_s') or 0:.1f} | {c.get('bytes_per_vector') or 0:.0f} | "
                         f"{maxr:.4f} | {' | '.join(_fmt_qps(q) for q in qs)} | "
                         f"{' / '.join(_ratio(x, y) for x, y in zip(qs, rf))} | "
                         f"{' / '.join(_ratio(x, y) for x, y in zip(qs, rh))} |"))
        lines += [r for _, r in sorted(rows, key=lambda t: -t[0])] + [""]
    bad = {k: v for k, v in cfg.items() if v.get("status") not in (None, "ok")}
    if bad:
        lines += ["## skipped / failed", ""] + [f"- {k}: {v['status']}: {v.get('reason')}" for k, v in bad.items()] + [""]
    lines += ["Memory: bytes/vector = index's own size report (nearq.memory_usage, usearch memory_usage) or "
              "its serialized size (faiss, hnswlib, svs, rabitqlib, turbovec), else RSS delta; "
              "see results.json configs.*.memory_method.", ""]
    return "\n".join(lines)


def plot(doc, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"(no plot: matplotlib unavailable: {e})")
        return
    pts = doc["points"]
    groups = sorted({(p["threads"], p["mode"]) for p in pts}, key=lambda g: (g[1] != "single", g[0]))
    if not groups:
        return
    panels = [(t, m, "qps") for t, m in groups]
    panels += [(t, m, "qps_cpu") for t, m in groups if t == 1 and all("qps_cpu" in p for p in pts)]
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 6), squeeze=False)
    names = list(dict.fromkeys(p["algo"] for p in pts))
    cmap = plt.get_cmap("tab20")
    colors = {al: cmap(i % 20) for i, al in enumerate(names)}
    for ax, (threads, mode, key) in zip(axes[0], panels):
        for al in names:
            ps = sorted([p for p in pts if p["algo"] == al and p["threads"] == threads and p["mode"] == mode],
                        key=lambda p: p["recall"])
            if not ps:
                continue
            style = "-o" if al.startswith("nearq") else "--."
            lw = 2.2 if al.startswith("nearq") else 1.0
            ax.plot([p["recall"] for p in ps], [p[key] for p in ps], style, label=al, lw=lw, ms=3,
                    color=colors[al])
        ax.set_yscale("log")
        ax.set_xlim(0.8, 1.0)
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second (log)" if key == "qps" else "queries per CPU-second (log)")
        ax.set_title(f"{doc['dataset']} — threads={threads}, {mode}, {'wall' if key == 'qps' else 'CPU'}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(docs):
    """Merge several results.json documents of the same dataset (later configs win)."""
    base = dict(docs[0])
    base["configs"] = {}
    pts = {}
    for d in docs:
        base["configs"].update(d["configs"])
        for p in d["points"]:
            pts.setdefault(p["algo"], {})
        for a in {p["algo"] for p in d["points"]}:
            pts[a] = [p for p in d["points"] if p["algo"] == a]
    base["points"] = [p for v in pts.values() for p in v]
    return base


if __name__ == "__main__":
    # python bench/report.py results.json                 -> re-render next to it
    # python bench/report.py a.json b.json --out DIR      -> merge, write DIR/results.json too
    args = sys.argv[1:]
    out = None
    if "--out" in args:
        i = args.index("--out")
        out = args[i + 1]
        del args[i : i + 2]
    docs = [json.load(open(a)) for a in args]
    d = merge(docs) if len(docs) > 1 else docs[0]
    out = out or os.path.dirname(os.path.abspath(args[0]))
    os.makedirs(out, exist_ok=True)
    if len(docs) > 1:
        json.dump(d, open(os.path.join(out, "results.json"), "w"), indent=1, default=str)
    open(os.path.join(out, "table.md"), "w").write(table_md(d))
    plot(d, os.path.join(out, "recall_qps.png"))
    print(table_md(d))
