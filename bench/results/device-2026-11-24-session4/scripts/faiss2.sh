#!/usr/bin/env bash
# device run with FAISS + rabitqlib: $1 = algos; then encoding throughput
cd "$(dirname "$0")/.."
mkdir -p /tmp/pkg/nearq && cp -r python/nearq/* /tmp/pkg/nearq/ && cp .devbuild/so/_nearq.abi3.so /tmp/pkg/nearq/
pip install -q --no-index --no-deps --target /tmp/site .devbuild/whl-faiss/*.whl 2>&1 | grep -v WARNING | tail -2
export PYTHONPATH=/tmp/pkg:/tmp/site
python3 -c "import nearq, faiss, rabitqlib; print(nearq.simd_info(), faiss.__version__)"
python3 bench/device_data.py unpack .devbuild/data /tmp/m.hdf5
R="--data /tmp/m.hdf5 --threads 1 --rounds ${ROUNDS:-3} --repeats ${REPEATS:-2} --stop-recall 0.98 --no-plot"
if [ -n "$1" ]; then
python3 bench/run.py $R --algos $1 --out $OUT/f 2>&1 | grep -E "built|Error|error" | tail -30
sed -n '/CPU-time/,$p' $OUT/f/table.md | head -30
fi
chmod +x .devbuild/bin/encode_speed
if [ -n "$ENC" ]; then
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout 200 python3 bench/encode_speed.py --bin .devbuild/bin/encode_speed --data /tmp/m.hdf5 --threads 1 --tq-bits 2 --rounds 2 2>&1 | tee $OUT/encode_tq_t1.txt | tail -12
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout 250 python3 bench/encode_speed.py --bin .devbuild/bin/encode_speed --data /tmp/m.hdf5 --threads 1 --no-faiss --n 20000 --rounds 1 2>&1 | tee $OUT/encode_saq_t1.txt | tail -40
fi
