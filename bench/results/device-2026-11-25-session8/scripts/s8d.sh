#!/usr/bin/env bash
# session 8: qg_ab (one --variants list, $1) then a paired run against SymphonyQG ($2, an algo
# list for bench/paired.py); carried files as in ../README.md
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || pwd)"
ROUNDS=30 bash "$HERE/s8.sh" "$1"
echo "== paired"
WHL=${WHL:-.devbuild/whl-rq2} PROUNDS=${PROUNDS:-30} bash bench/results/device-2026-11-24-session6/scripts/paired.sh "$2" ""
