#!/usr/bin/env bash
# device probe: SVS LVQ vs nearq LVQ; AVX-512 vs AVX2 dispatch for nearq
cd "$(dirname "$0")/.."
mkdir -p /tmp/pkg/nearq && cp -r python/nearq/* /tmp/pkg/nearq/ && cp .devbuild/so/_nearq.abi3.so /tmp/pkg/nearq/
pip install -q --no-index --no-deps --target /tmp/site ${WHL:-.devbuild/whl-svs}/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/pkg:/tmp/site
cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag
python3 -c "import nearq; print(nearq.simd_info())"; true
lscpu | grep -E "Model name|MHz|Thread|NUMA node0"
python3 bench/device_data.py unpack .devbuild/data /tmp/m.hdf5
R="--data /tmp/m.hdf5 --threads 1 --rounds ${ROUNDS:-2} --repeats ${REPEATS:-1} --stop-recall 0.98 --no-plot"
python3 bench/run.py $R --algos $1 --out $OUT/a 2>&1 | grep -E "built|Error|error" | tail -30
cat $OUT/a/table.md | head -40
[ -n "$2" ] && NEARQ_SIMD=avx2 python3 bench/run.py $R --algos $2 --out $OUT/b 2>&1 | grep -E "built|Error|error" | tail -10
[ -n "$2" ] && cat $OUT/b/table.md | head -20
