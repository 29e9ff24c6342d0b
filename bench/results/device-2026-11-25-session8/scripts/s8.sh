#!/usr/bin/env bash
# session 8 device batch: prefetch experiments (qg_ab) and the Index path's overhead (qg_path)
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || pwd)"
[ -f /tmp/tr.f32 ] || python3 bench/device_data.py raw .devbuild/data /tmp >/dev/null
chmod +x .devbuild/bin8/*
lscpu | grep -E "Model name|L1d|L2|L3" 
for v in "$@"; do
  [ -z "$v" ] && continue
  echo "== $v"
  .devbuild/bin8/qg_ab /tmp/tr.f32 /tmp/te.f32 384 --gt /tmp/gt.i32 --build-ef 200 --index-cache /tmp/fl.nq --rounds ${ROUNDS:-30} --variants $v 2>&1
done
# QGPATH=1: examples/qg_path at each beam of EFS (the Index path with residual and f32
# re-ranking against the bare graph). The first run of this session (qg_ab-1-prefetch-lines.txt)
# used the earlier qg_path, which printed the Index path and the bare graph only, once with
# f16 rows and once with f32 rows (NEARQ_QG_HALF=0 REBUILD=1).
if [ -n "$QGPATH" ]; then
  for ef in ${EFS:-44}; do
    echo "== qg_path ef $ef"; .devbuild/bin8/qg_path /tmp/tr.f32 /tmp/te.f32 384 /tmp/rq.nq $ef 2>&1 | tail -1
  done
fi
