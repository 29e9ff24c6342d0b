#!/usr/bin/env bash
# device: paired interleaved runs (bench/paired.py), then optionally the regular harness and
# SAQ encoding throughput. $1, $2: algo lists for two paired runs; RUN: algos for run.py
HERE="$(cd "$(dirname "$0")" && pwd)"
# run from the repository root (the device copy of the tree); .devbuild/ holds the carried files
cd "$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || pwd)"
mkdir -p /tmp/pkg/nearq && cp -r python/nearq/* /tmp/pkg/nearq/ && cp .devbuild/so/_nearq.abi3.so /tmp/pkg/nearq/
pip install -q --no-index --no-deps --target /tmp/site ${WHL:-.devbuild/whl-faiss}/*.whl 2>&1 | grep -v WARNING | tail -2
export PYTHONPATH=/tmp/pkg:/tmp/site
python3 -c "import nearq, rabitqlib; print(nearq.simd_info())"
cat /sys/kernel/mm/transparent_hugepage/enabled
python3 bench/device_data.py unpack .devbuild/data /tmp/m.hdf5
P="--data /tmp/m.hdf5 --rounds ${PROUNDS:-15} --build-threads 16"
[ -n "$1" ] && python3 bench/paired.py $P --algos $1 --out $OUT/p1 2>&1 | grep -vE "^\s+\[" | tail -30
[ -n "$2" ] && python3 bench/paired.py $P --algos $2 --out $OUT/p2 2>&1 | grep -vE "^\s+\[" | tail -30
if [ -n "$RUN" ]; then
python3 bench/run.py --data /tmp/m.hdf5 --threads 1 --rounds ${ROUNDS:-3} --repeats 2 --stop-recall 0.98 --no-plot --algos $RUN --out $OUT/r 2>&1 | grep -E "built|Error|error" | tail -30
sed -n '/CPU-time/,$p' $OUT/r/table.md | head -30
fi
if [ -n "$ENC" ]; then
chmod +x .devbuild/bin/encode_speed
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout 250 python3 bench/encode_speed.py --bin .devbuild/bin/encode_speed --data /tmp/m.hdf5 --threads 1 --no-faiss --n 20000 --rounds 1 2>&1 | tee $OUT/encode_saq_t1.txt | tail -40
fi
