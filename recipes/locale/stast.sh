#!/usr/bin/env bash
# STAST speech-translation experiments on the locale corpus (recipes/locale/RESULTS.md, "STAST").
#   bash recipes/locale/stast.sh train LANG [NAME...]  # LANG: de | ro; NAME: the models below (default: all)
#   bash recipes/locale/stast.sh eval LANG [NAME...]   # decodes the test set → exp/stast/results.jsonl
#   bash recipes/locale/stast.sh list                  # every model's config files, a line each
# Models: stast (the method), e2e (plain end-to-end ST of equal size), mt (the cascade's MT brick;
# the cascade is the foundation's ASR brick → it), the ablations no_shrink, no_mt, no_adapt and the
# other adaptation distances mse_mean, contrastive; NAME_mt_init (e.g. stast_mt_init, no_shrink_mt_init)
# also starts the text encoder and decoder from the MT brick (train mt first).
# Needs `speechkit prepare locale` and the foundation's full ASR brick (exp/locale/full/brick).
# THREADS=1 trains with one thread (two runs side by side on 2 cores).
set -euo pipefail
THREADS=${THREADS:-2}
C=recipes/locale/conf/stast
X=${X:-exp/stast}  # X=exp/stast/seed1 FIT_ARGS=--seed_everything=1: a second seed
ASR=exp/locale/full/brick
source "$(dirname "$0")/lib.sh"

configs() {  # configs LANG NAME: the config files of a model; NAME_mt_init adds the MT warm start
  local lang=() mt_init=() base=$2
  [ "$1" = ro ] && lang=($C/en_ro.yaml)
  if [[ $base == *_mt_init ]]; then
    base=${base%_mt_init}; mt_init=($C/mt_init.yaml)
    [ "$1" = ro ] && mt_init+=($C/mt_init_ro.yaml)
  fi
  case $base in
    stast) echo $C/stast_en_de.yaml "${mt_init[@]}" "${lang[@]}" ;;
    mt) [ "$1" = ro ] && echo $C/mt_en_de.yaml $C/mt_en_ro.yaml || echo $C/mt_en_de.yaml ;;
    e2e|no_shrink|no_mt|no_adapt|mse_mean|contrastive)
      echo $C/stast_en_de.yaml $C/$base.yaml "${mt_init[@]}" "${lang[@]}" ;;
    *) echo "unknown model $2" >&2; exit 2 ;;
  esac
}
BASES="mt stast e2e no_shrink no_mt no_adapt mse_mean contrastive"
MODELS="$BASES stast_mt_init e2e_mt_init"  # the default of train and eval

list() {  # LANG NAME: CONFIG... for every model (tests parse them)
  for lang in de ro; do
    for m in $BASES; do  # each with and without the MT warm start
      echo "$lang $m: $(configs $lang $m)"
      [ "$m" = mt ] || echo "$lang ${m}_mt_init: $(configs $lang ${m}_mt_init)"
    done
  done
}

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
  list) list ;;
  *) echo "usage: $0 train|eval LANG [NAME...] | list"; exit 2 ;;
esac
