#!/usr/bin/env bash
# session 7 device batch: interleaved examples/qg_ab runs (stripped binary carried in
# .devbuild/bin); each argument one --variants list (BITS:HALF@EF,...)
HERE="$(cd "$(dirname "$0")" && pwd)"
# run from the repository root (the device copy of the tree); .devbuild/ holds the carried files
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
chmod +x .devbuild/bin/*
for v in "$@"; do
  echo "== $v"
  .devbuild/bin/qg_ab /tmp/tr.f32 /tmp/te.f32 384 --gt /tmp/gt.i32 --build-ef 200 --index-cache /tmp/fl.nq --rounds ${ROUNDS:-30} --variants $v 2>&1
done
