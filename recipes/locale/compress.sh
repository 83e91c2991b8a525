#!/usr/bin/env bash
# Compression of the locale ASR transducer (recipes/locale/RESULTS.md "Compression"): the full brick
# fine-tuned 2,000 steps dense and under each compression config, then exported and decoded.
#   bash recipes/locale/compress.sh train [NAME...]  # dense sparse_srste sparse_ste int8 sparse_int8 (default: all)
#   bash recipes/locale/compress.sh eval [NAME...]   # export each, decode test (greedy) → $X/results.jsonl
#   bash recipes/locale/compress.sh list
# Needs `speechkit prepare locale` and exp/locale/full/brick.
set -euo pipefail
THREADS=${THREADS:-2}
C=recipes/locale/conf
X=${X:-exp/compress}
NAMES="dense sparse_srste sparse_ste int8 sparse_int8"
source "$(dirname "$0")/lib.sh"

configs() {
  case $1 in
    dense) echo $C/demo.yaml $C/full.yaml $C/compress/base.yaml ;;
    sparse_srste|sparse_ste|int8|sparse_int8) echo $C/demo.yaml $C/full.yaml $C/compress/base.yaml $C/compress/$1.yaml ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

list() { for m in $NAMES; do echo "$m: $(configs $m)"; done; }

train() { for m in ${@:-$NAMES}; do fit $X/$m $(configs "$m"); done; }

eval_() {
  for m in ${@:-$NAMES}; do
    decode "$m test" $X/$m/brick data/locale/asr/test.jsonl
  done
}

case ${1:-} in
  train) shift; train "$@" ;;
  eval) shift; eval_ "$@" ;;
  list) list ;;
  *) sed -n 2,7p "$0"; exit 2 ;;
esac
