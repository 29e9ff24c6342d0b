#!/usr/bin/env bash
# Run the benchmark on the offline device machine (Sapphire Rapids, CPython 3.12, x86_64,
# no network, no Rust).  Everything is installed from wheels carried in .whl/ (see
# bench/fetch_device_wheels.sh, plus the nearq cp312 manylinux wheel copied in there).
#
#   bash bench/device.sh DATA.hdf5 [extra run.py args...]
#   e.g. bash bench/device.sh shared/data/pypi-minilm-384-angular-50k.hdf5 --threads 1,all --batch
#
# Results go to $OUT/bench (when the runner provides $OUT) else bench/results/device-<host>.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: bench/device.sh DATA.hdf5 [run.py args]}; shift
PY=${PYTHON:-python3}
VENV=${VENV:-/tmp/nearq-bench-venv}
RESULTS=${RESULTS:-${OUT:+$OUT/bench}}
RESULTS=${RESULTS:-bench/results/device-$(hostname -s)}

ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/ - run bench/fetch_device_wheels.sh first (on a networked machine)" >&2; exit 1; }
ls .whl/nearq-*.whl >/dev/null 2>&1 || echo "warning: no nearq wheel in .whl/ - nearq configs will be skipped" >&2

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
# --no-index: never touch the network; every wheel in .whl/ is installed (peers, numpy, h5py, nearq).
"$VENV/bin/python" -m pip install --quiet --no-index --find-links .whl .whl/*.whl

"$VENV/bin/python" - <<'PY'
import importlib
for m in ["numpy", "h5py", "nearq", "faiss", "hnswlib", "usearch", "svs", "rabitqlib", "turbovec", "matplotlib"]:
    try:
        mod = importlib.import_module(m)
        print(f"  {m:10s} ok {getattr(mod, '__version__', '')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {m:10s} missing ({type(e).__name__})")
PY
lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)|Thread|NUMA node\(s\)" || true

mkdir -p "$RESULTS"
# Default: one-query-per-call QPS at 1 thread and all threads, plus batch QPS.
ARGS=("$@")
[[ ${#ARGS[@]} -eq 0 ]] && ARGS=(--threads 1,all --batch)
"$VENV/bin/python" bench/run.py --data "$DATA" --out "$RESULTS" "${ARGS[@]}" 2>&1 | tee "$RESULTS/run.log"
