#!/usr/bin/env bash
# session 6 device batch: paired runs ($1, $2 lists), then qg_bench prefetch variants
HERE="$(cd "$(dirname "$0")" && pwd)"
# run from the repository root (the device copy of the tree); .devbuild/ holds the carried files
cd "$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || pwd)"
WHL=.devbuild/whl-rq2 PROUNDS=${PROUNDS:-25} bash "$HERE/paired.sh" "$1" "$2"
if [ -n "$QGB" ]; then
python3 - <<'PY'
import h5py, numpy as np
f = h5py.File('/tmp/m.hdf5', 'r')
np.ascontiguousarray(f['train'][:], dtype=np.float32).tofile('/tmp/tr.f32')
np.ascontiguousarray(f['test'][:1000], dtype=np.float32).tofile('/tmp/te.f32')
np.ascontiguousarray(f['neighbors'][:1000, :10], dtype=np.int32).tofile('/tmp/gt.i32')
PY
chmod +x .devbuild/bin/qg_bench
.devbuild/bin/qg_bench /tmp/tr.f32 /tmp/te.f32 384 --gt /tmp/gt.i32 --build-ef 200 --cache /tmp/qg.nq --ef 56,64 --rounds 3 2>&1 | tail -3
.devbuild/bin/qg_bench /tmp/tr.f32 /tmp/te.f32 384 --gt /tmp/gt.i32 --cache /tmp/qg.nq --ef 56 --rounds 15 --variants "$QGB" 2>&1 | tail -6
fi
