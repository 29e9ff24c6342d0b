#!/usr/bin/env bash
# Download (here, with network) every wheel the benchmark needs on the offline device
# machine: CPython 3.12, x86_64 manylinux.  Wheels land in .whl/ (git-ignored) at the
# repository root; the device installs them with `pip install --no-index --find-links .whl`.
#
#   bench/fetch_device_wheels.sh                         # default groups, 45.6 MiB
#   PEERS="faiss hnswlib svs usearch" bench/fetch_device_wheels.sh
#   WITH_PLOT=1 bench/fetch_device_wheels.sh             # add matplotlib (+~20 MiB)
#
# Only binary wheels, no dependency resolution (--no-deps): the list below is the full
# closure, checked with  unzip -p .whl/X.whl '*/METADATA' | grep ^Requires-Dist
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DEST"

# Wheel groups (sizes of the cp312 manylinux wheels, measured): pick with PEERS="...".
#   base     numpy 15.9 + h5py 5.2                                   = 21.1 MiB (always)
#   faiss    faiss-cpu 18.0 + packaging 0.1                           = 18.1 MiB
#   hnswlib  chroma-hnswlib 2.3 ('import hnswlib'; hnswlib 0.8.0 is sdist-only on PyPI)
#   rabitqlib 3.3      turbovec 0.8
#   svs      scalable-vs 9.4 + archspec + toml                        =  9.5 MiB
#   usearch  usearch 2.2 + numkong 10.1 (hard import dependency) + tqdm = 12.4 MiB
#   plot     matplotlib + contourpy cycler fonttools kiwisolver pillow pyparsing dateutil six ~ 20 MiB
# Default (45.6 MiB) keeps room under the ~55 MiB carry budget for the nearq wheel itself.
PEERS=${PEERS:-"faiss hnswlib rabitqlib turbovec"}
[[ "${WITH_PLOT:-0}" == 1 ]] && PEERS="$PEERS plot"
PKGS=(numpy==2.4.6 h5py==3.16.0)
for g in $PEERS; do
  case $g in
    faiss)     PKGS+=(faiss-cpu==1.15.1 packaging==26.3) ;;
    hnswlib)   PKGS+=(chroma-hnswlib==0.7.6) ;;
    rabitqlib) PKGS+=(rabitqlib==0.7.1) ;;
    turbovec)  PKGS+=(turbovec==1.1.2) ;;
    svs)       PKGS+=(scalable-vs==0.5.0 archspec==0.2.7 toml==0.10.2) ;;
    usearch)   PKGS+=(usearch==2.26.6 numkong==7.8.6 tqdm==4.70.1) ;;
    plot)      PKGS+=(matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0
                      kiwisolver==1.5.1 pillow==13.0.0 pyparsing==3.3.2 python-dateutil==2.9.0.post0
                      six==1.17.0) ;;
    *) echo "unknown group '$g'" >&2; exit 2 ;;
  esac
done
if [[ "${CLEAN:-0}" == 1 ]]; then rm -f "$DEST"/*.whl; fi   # CLEAN=1: start from an empty folder (also deletes a nearq wheel!)
# The nearq wheel itself (built by the project's release job / maturin build) is copied in
# separately:  cp target/wheels/nearq-*-cp312-*manylinux*x86_64.whl .whl/

PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
failed=()
for p in "${PKGS[@]}"; do
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
       --implementation cp "${PLAT[@]}" -d "$DEST" "$p"; then
    failed+=("$p")
  fi
done

echo "--- wheels in $DEST:"
ls -l "$DEST"/*.whl | awk '{printf "%8.1f MiB  %s\n", $5/1048576, $9}'
du -cb "$DEST"/*.whl | tail -1 | awk '{printf "total %.1f MiB\n", $1/1048576}'
echo "--- declared dependencies (check every non-extra one is in the folder):"
for w in "$DEST"/*.whl; do
  deps=$(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/Requires-Dist: //' | tr '\n' ';')
  echo "$(basename "$w" | cut -d- -f1): ${deps:-<none>}"
done
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
