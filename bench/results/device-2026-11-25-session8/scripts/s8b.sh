#!/usr/bin/env bash
# session 8: the Index path's re-ranking from residual codes vs f32 vectors vs the bare graph
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
for ef in ${EFS:-44 44}; do
  echo "== qg_path ef $ef"; .devbuild/bin8/qg_path /tmp/tr.f32 /tmp/te.f32 384 /tmp/rq.nq $ef 2>&1 | tail -1
done
