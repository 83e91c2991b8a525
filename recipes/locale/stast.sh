#!/usr/bin/env bash
# STAST speech-translation experiments on the locale corpus (recipes/locale/RESULTS.md, "STAST").
#   bash recipes/locale/stast.sh train LANG [NAME...]  # LANG: de | ro; NAME: the models below (default: all)
#   bash recipes/locale/stast.sh eval LANG [NAME...]   # decodes the test set → exp/stast/results.jsonl
# Models: stast (the method), e2e (plain end-to-end ST of equal size), mt (the cascade's MT brick;
# the cascade is the foundation's ASR brick → it), the ablations no_shrink, no_mt, no_adapt and the
# adaptation distances token_mse, contrastive; stast_mt_init and e2e_mt_init also start the text
# encoder and decoder from the MT brick (train mt first).
# Needs `speechkit prepare locale` and the foundation's full ASR brick (exp/locale/full/brick).
# THREADS=1 trains with one thread (two runs side by side on 2 cores).
set -euo pipefail
THREADS=${THREADS:-2}
C=recipes/locale/conf/stast
X=exp/stast
ASR=exp/locale/full/brick
source "$(dirname "$0")/lib.sh"

configs() {  # configs LANG NAME: the config files of a model
  local lang=() mt_lang=()
  [ "$1" = ro ] && { lang=($C/en_ro.yaml); mt_lang=($C/mt_en_ro.yaml); }
  case $2 in
    stast) echo $C/stast_en_de.yaml "${lang[@]}" ;;
    mt) echo $C/mt_en_de.yaml "${mt_lang[@]}" ;;
    e2e|no_shrink|no_mt|no_adapt|token_mse|contrastive) echo $C/stast_en_de.yaml $C/$2.yaml "${lang[@]}" ;;
    stast_mt_init) echo $C/stast_en_de.yaml $C/mt_init.yaml "${lang[@]}" ;;
    e2e_mt_init) echo $C/stast_en_de.yaml $C/e2e.yaml $C/mt_init.yaml "${lang[@]}" ;;
    *) echo "unknown model $2" >&2; exit 2 ;;
  esac
}
MODELS="mt stast e2e no_shrink no_mt no_adapt token_mse contrastive stast_mt_init e2e_mt_init"

train() {  # train LANG [NAME...]
  local lang=$1; shift
  for m in ${@:-$MODELS}; do
    fit $X/en_$lang/$m $(configs "$lang" "$m")
  done
}

eval_models() {  # eval LANG [NAME...]: greedy and beam 4 on the ST test set
  local lang=$1; shift
  local test=data/locale/st/en-$lang/test.jsonl
  for b in 1 4; do
    for m in ${@:-$MODELS}; do
      local brick=$X/en_$lang/$m/brick
      [ -d "$brick" ] || continue
      if [ "$m" = mt ]; then
        decode "en-$lang cascade b$b" $ASR "$test" --then "$brick" --beam $b
        decode "en-$lang mt-on-text b$b" "$brick" data/locale/mt/en-$lang/test.jsonl --beam $b
      else
        decode "en-$lang $m b$b" "$brick" "$test" --beam $b
      fi
    done
  done
}

case "${1:-}" in
  train) shift; train "$@" ;;
  eval) shift; eval_models "$@" ;;
  *) echo "usage: $0 train|eval LANG [NAME...]"; exit 2 ;;
esac
