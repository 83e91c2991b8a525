#!/usr/bin/env bash
# Compression on the locale corpus (recipes/locale/RESULTS.md "Compression"): the full ASR brick
# fine-tuned 2,000 steps dense and under each compression config (sparse_srste_long: 3,500 steps); the
# same configs on the MT and STAST bricks (800 steps, against dense fine-tuning of the same length). Every fit ends
# with the folded, compressed brick in $X/NAME/brick.
#   bash recipes/locale/compress.sh train [NAME...]  # (default: all of $NAMES)
#   bash recipes/locale/compress.sh eval [NAME...]   # decode each test set (greedy) → $X/results.jsonl
#   bash recipes/locale/compress.sh list
# Needs `speechkit prepare locale` and exp/locale/full/brick.
set -euo pipefail
THREADS=${THREADS:-2}
C=recipes/locale/conf
X=${X:-exp/compress}
NAMES="dense sparse_srste sparse_ste int8 sparse_int8 sparse_srste_long mt_dense mt_int8 mt_sparse_srste mt_sparse_int8
  stast_dense stast_int8 stast_sparse_int8"
source "$(dirname "$0")/lib.sh"

configs() {
  case $1 in
    dense) echo $C/demo.yaml $C/full.yaml $C/compress/base.yaml ;;
    sparse_srste|sparse_ste|int8|sparse_int8) echo $C/demo.yaml $C/full.yaml $C/compress/base.yaml $C/compress/$1.yaml ;;
    mt_dense) echo $C/stast/mt_en_de.yaml $C/compress/mt.yaml ;;
    stast_dense) echo $C/stast/stast_en_de.yaml $C/stast/mse_mean.yaml $C/stast/mt_init.yaml $C/compress/stast.yaml ;;
    *_long) echo $(configs ${1%_long}) $C/compress/long.yaml ;;
    mt_*|stast_*) echo $(configs ${1%%_*}_dense) $C/compress/${1#*_}.yaml ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

list() { for m in $NAMES; do echo "$m: $(configs $m)"; done; }

train() { for m in ${@:-$NAMES}; do fit $X/$m $(configs "$m"); done; }

eval_() {
  for m in ${@:-$NAMES}; do
    local test=data/locale/asr/test.jsonl
    case $m in mt_*) test=data/locale/mt/en-de/test.jsonl ;; stast_*) test=data/locale/st/en-de/test.jsonl ;; esac
    decode "$m test" $X/$m/brick $test
  done
}

case ${1:-} in
  train) shift; train "$@" ;;
  eval) shift; eval_ "$@" ;;
  list) list ;;
  *) sed -n 2,7p "$0"; exit 2 ;;
esac
