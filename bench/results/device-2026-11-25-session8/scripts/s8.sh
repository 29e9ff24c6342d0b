#!/usr/bin/env bash
# session 8 device batch: prefetch experiments (qg_ab) and the Index path's overhead (qg_path)
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || pwd)"
if [ ! -f /tmp/tr.f32 ]; then
python3 bench/device_data.py unpack .devbuild/data /tmp/m.hdf5 >/dev/null
python3 - <<'PY'
import h5py, numpy as np
f = h5py.File('/tmp/m.hdf5', 'r')
np.ascontiguousarray(f['train'][:], dtype=np.float32).tofile('/tmp/tr.f32')
np.ascontiguousarray(f['test'][:1000], dtype=np.float32).tofile('/tmp/te.f32')
np.ascontiguousarray(f['neighbors'][:1000, :10], dtype=np.int32).tofile('/tmp/gt.i32')
PY
fi
chmod +x .devbuild/bin8/*
lscpu | grep -E "Model name|L1d|L2|L3" 
for v in "$@"; do
  echo "== $v"
  .devbuild/bin8/qg_ab /tmp/tr.f32 /tmp/te.f32 384 --gt /tmp/gt.i32 --build-ef 200 --index-cache /tmp/fl.nq --rounds ${ROUNDS:-30} --variants $v 2>&1
done
if [ -n "$QGPATH" ]; then
  echo "== qg_path f16 rows"; .devbuild/bin8/qg_path /tmp/tr.f32 /tmp/te.f32 384 /tmp/rq.nq 44 2>&1 | tail -2
  echo "== qg_path f32 rows"; NEARQ_QG_HALF=0 REBUILD=1 .devbuild/bin8/qg_path /tmp/tr.f32 /tmp/te.f32 384 /tmp/rq.nq 44 2>&1 | tail -2
  echo "== qg_path f16 rows again"; REBUILD=1 .devbuild/bin8/qg_path /tmp/tr.f32 /tmp/te.f32 384 /tmp/rq.nq 44 2>&1 | tail -2
fi
