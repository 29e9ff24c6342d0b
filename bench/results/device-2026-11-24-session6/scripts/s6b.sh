#!/usr/bin/env bash
# QG per-expansion cost: 2k (rows in the LLC) vs 50k vectors, one thread
HERE="$(cd "$(dirname "$0")" && pwd)"
# run from the repository root (the device copy of the tree); .devbuild/ holds the carried files
cd "$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || pwd)"
pip install -q --no-index --no-deps --target /tmp/site .devbuild/whl-rq2/*.whl >/dev/null 2>&1
python3 bench/device_data.py unpack .devbuild/data /tmp/m.hdf5 >/dev/null
python3 - <<'PY'
import h5py, numpy as np
f = h5py.File('/tmp/m.hdf5', 'r')
x = np.ascontiguousarray(f['train'][:], dtype=np.float32)
x.tofile('/tmp/tr.f32'); x[:2000].tofile('/tmp/tr2k.f32')
np.ascontiguousarray(f['test'][:1000], dtype=np.float32).tofile('/tmp/te.f32')
np.ascontiguousarray(f['neighbors'][:1000, :10], dtype=np.int32).tofile('/tmp/gt.i32')
PY
chmod +x .devbuild/bin/*
for i in 1 2; do
.devbuild/bin/qg_bench /tmp/tr2k.f32 /tmp/te.f32 384 --build-ef 200 --cache /tmp/qg2k.nq --ef 32,56 --rounds 5 --prep 2>&1 | grep -E "ef=|prep"
.devbuild/bin/qg_bench /tmp/tr.f32 /tmp/te.f32 384 --gt /tmp/gt.i32 --build-ef 200 --cache /tmp/qg.nq --ef 32,56 --rounds 5 --prep 2>&1 | grep -E "ef=|prep"
done
