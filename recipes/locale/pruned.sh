#!/usr/bin/env bash
# Pruned vs full RNN-T loss on the locale corpus (recipes/locale/RESULTS.md "Pruned RNN-T loss"): the
# demo model trained with torchaudio's rnnt_loss (rnnt) and with speechkit's pure-PyTorch pruned loss
# (pruned: switched on at step 1,500; smoothed: k2's smoothed simple loss and a ramped pruned loss),
# same steps and seed; then each decoded on test.
#   bash recipes/locale/pruned.sh train [rnnt|pruned|smoothed ...]   # (default: all three)
#   bash recipes/locale/pruned.sh eval [rnnt|pruned|smoothed ...]    # greedy test WER → $X/results.jsonl
#   bash recipes/locale/pruned.sh list
set -euo pipefail
THREADS=${THREADS:-1}
C=recipes/locale/conf
X=${X:-exp/pruned}
source "$(dirname "$0")/lib.sh"

configs() {
  case $1 in
    rnnt) echo $C/demo.yaml $C/pruned/base.yaml ;;
    pruned) echo $C/demo.yaml $C/pruned/base.yaml $C/pruned/pruned.yaml ;;
    smoothed) echo $C/demo.yaml $C/pruned/base.yaml $C/pruned/pruned.yaml $C/pruned/smoothed.yaml ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

list() { for m in rnnt pruned smoothed; do echo "$m: $(configs $m)"; done; }
train() { for m in ${@:-rnnt pruned smoothed}; do fit $X/$m $(configs "$m"); done; }
eval_() { for m in ${@:-rnnt pruned smoothed}; do decode "$m test" $X/$m/brick data/locale/asr/test.jsonl; done; }

case ${1:-} in
  train) shift; train "$@" ;;
  eval) shift; eval_ "$@" ;;
  list) list ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
