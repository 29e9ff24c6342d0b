#!/usr/bin/env bash
# session 7 device batch: interleaved examples/qg_ab runs (stripped binary carried in
# .devbuild/bin); each argument one --variants list (BITS:HALF@EF,...)
HERE="$(cd "$(dirname "$0")" && pwd)"
# run from the repository root (the device copy of the tree); .devbuild/ holds the carried files
cd "$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || pwd)"
[ -f /tmp/tr.f32 ] || python3 bench/device_data.py raw .devbuild/data /tmp >/dev/null
chmod +x .devbuild/bin/*
for v in "$@"; do
  echo "== $v"
  .devbuild/bin/qg_ab /tmp/tr.f32 /tmp/te.f32 384 --gt /tmp/gt.i32 --build-ef 200 --index-cache /tmp/fl.nq --rounds ${ROUNDS:-30} --variants $v 2>&1
done
