#!/usr/bin/env bash
# The LM-fusion domain-shift experiment on the locale corpus (recipes/locale/RESULTS.md, "LM fusion"):
# ASR trained on the in-domain catalogs, an LM on the text of the held-out-domain catalogs (git +
# PostgreSQL, heldout_train; disjoint from heldout_test), tested on held-out-domain audio and in-domain.
#   bash recipes/locale/fusion.sh train [NAME...]  # lm_transformer lm_lstm ilmt ilmt_lstm (default: all)
#   bash recipes/locale/fusion.sh tune [sf|ilme|lstm|indomain]  # tune-fusion grids on heldout_dev (indomain:
#                                                  # on dev) → $X/tune-*.jsonl
#   bash recipes/locale/fusion.sh ilma [RHO...]    # adapt-ilm on heldout_train text (default ρ: 0.1 0.5 0.9)
#   bash recipes/locale/fusion.sh mwer [NAME...]   # mwer_sf mwer_ilme fine-tuning (after tune: the weights)
#   bash recipes/locale/fusion.sh eval             # every condition on heldout_test and test → $X/results.jsonl
# BASE=ilmt_lstm runs tune/ilma/eval on the LSTM-predictor model (with its own SF_*/ILME_* weights).
# The fusion weights (SF_*, ILME_*; defaults: the values tune picked, RESULTS.md) and ILMA_RHO can be
# overridden from the environment. Needs `speechkit prepare locale` and exp/locale/full/brick.
set -euo pipefail
THREADS=${THREADS:-2}
C=recipes/locale/conf
X=${X:-exp/fusion}
LM=${LM:-$X/lm_lstm/brick}  # the better of the two LMs on heldout_dev (RESULTS.md)
SF=(--lm "$LM" --lm-weight "${SF_LM:-0.9}" --length-reward "${SF_LR:-3}")
ILME=(--lm "$LM" --lm-weight "${ILME_LM:-0.9}" --ilm-weight "${ILME_ILM:-0.4}" --length-reward "${ILME_LR:-1.5}")
ILMA=${ILMA:-rho0.9_s100}  # the ILMA brick eval uses (the best on heldout_dev, RESULTS.md)
BASE=${BASE:-ilmt}  # the ASR model of tune/ilma/eval: ilmt (stateless predictor) or ilmt_lstm
source "$(dirname "$0")/lib.sh"

configs() {
  case $1 in
    lm_transformer) echo $C/fusion/lm_transformer.yaml ;;
    lm_lstm) echo $C/fusion/lm_transformer.yaml $C/fusion/lm_lstm.yaml ;;
    ilmt|ilmt_lstm|mwer_sf|mwer_ilme) echo $C/demo.yaml $C/full.yaml $C/fusion/$1.yaml ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

list() { for m in lm_transformer lm_lstm ilmt ilmt_lstm mwer_sf mwer_ilme; do echo "$m: $(configs $m)"; done; }

train() { for m in ${@:-lm_transformer lm_lstm ilmt ilmt_lstm}; do fit $X/$m $(configs "$m"); done; }

mwer() {  # the weights of the decode below go into training too
  for m in ${@:-mwer_sf mwer_ilme}; do
    local w=("--model.init_args.lm_weight=${SF_LM:-0.9}" "--model.init_args.length_reward=${SF_LR:-3}")
    [ "$m" = mwer_ilme ] && w=("--model.init_args.lm_weight=${ILME_LM:-0.9}"
      "--model.init_args.ilm_weight=${ILME_ILM:-0.4}" "--model.init_args.length_reward=${ILME_LR:-1.5}")
    FIT_ARGS="${FIT_ARGS:-} ${w[*]}" fit $X/$m $(configs "$m")
  done
}

tune() {  # tune [sf|ilme]: shallow fusion (λ_ILM = 0) and ILME grids on heldout_dev → $X/tune-*.jsonl
  # (the later grids extend the earlier ones where their best point was at an edge)
  local dev=data/locale/asr/heldout_dev.jsonl
  grid() { speechkit tune-fusion $X/$BASE/brick $dev --lm "$LM" --json --threads "$THREADS" "$@"; }
  case ${1:-both} in sf|both)
    { grid --lm-weights 0,0.1,0.2,0.3,0.4,0.5,0.6 --ilm-weights 0 --length-rewards 0,0.5,1,1.5,2
      grid --lm-weights 0.7,0.8,0.9,1.0 --ilm-weights 0 --length-rewards 1,1.5,2,2.5,3
      grid --lm-weights 0.5,0.6 --ilm-weights 0 --length-rewards 2.5,3
      grid --lm-weights 0.8,0.9,1.0,1.2,1.4 --ilm-weights 0 --length-rewards 2.5,3,3.5,4,5; } | tee $X/tune-sf.jsonl ;;
  esac
  case ${1:-both} in ilme|both)
    { grid --lm-weights 0.3,0.4,0.5,0.6,0.7 --ilm-weights 0.1,0.2,0.3 --length-rewards 0.5,1,1.5,2
      grid --lm-weights 0.6,0.7,0.8,0.9 --ilm-weights 0.4,0.5 --length-rewards 0.5,1,1.5,2
      grid --lm-weights 0.8,0.9 --ilm-weights 0.1,0.2,0.3 --length-rewards 0.5,1,1.5,2
      grid --lm-weights 0.9,1.0,1.2,1.4 --ilm-weights 0.3,0.4,0.5,0.6 --length-rewards 1,1.5,2,3; } | tee $X/tune-ilme.jsonl ;;
  esac
  case ${1:-both} in indomain)  # in-domain weights: the first 400 utterances of the in-domain dev set
    local in=(--max-utts 400); dev=data/locale/asr/dev.jsonl
    { grid --lm-weights 0,0.1,0.2,0.3 --ilm-weights 0 --length-rewards 0,0.5,1 "${in[@]}"
      grid --lm-weights 0.1,0.2,0.3 --ilm-weights 0.1,0.2 --length-rewards 0.5,1 "${in[@]}"; } | tee $X/tune-indomain.jsonl
    dev=data/locale/asr/heldout_dev.jsonl ;;
  esac
  case ${1:-both} in lstm)  # BASE=ilmt_lstm: one smaller grid around the stateless model's optimum
    { grid --lm-weights 0,0.6,0.9,1.2 --ilm-weights 0 --length-rewards 0,1,2,3,4
      grid --lm-weights 0.6,0.9,1.2 --ilm-weights 0.2,0.4,0.6 --length-rewards 1,1.5,2,3; } | tee $X/tune-lstm.jsonl ;;
  esac
}

ilma() {  # ILMA of $BASE from the held-out-domain text, one brick per ρ and step count, scored on heldout_dev
  for steps in ${ILMA_STEPS:-100 500}; do
    for rho in ${@:-0.1 0.5 0.9}; do
      local out=$X/${BASE}_ilma_rho${rho}_s$steps
      [ -d $out ] || speechkit adapt-ilm $X/$BASE/brick data/locale/asr/heldout_train.jsonl \
        --valid data/locale/asr/heldout_dev.jsonl --rho "$rho" --steps "$steps" --out $out --threads "$THREADS" --json
      decode "heldout_dev $BASE ilma rho$rho s$steps" $out data/locale/asr/heldout_dev.jsonl --beam 4
    done
  done
}

eval_all() {  # every condition of $BASE whose brick exists, beam 4, on heldout_test and test
  for set in heldout_test test; do
    local m=data/locale/asr/$set.jsonl
    decode "$set $BASE no_lm" $X/$BASE/brick "$m" --beam 4
    decode "$set $BASE sf" $X/$BASE/brick "$m" --beam 4 "${SF[@]}"
    decode "$set $BASE ilme" $X/$BASE/brick "$m" --beam 4 "${ILME[@]}"
    decode "$set $BASE ilma" $X/${BASE}_ilma_$ILMA "$m" --beam 4
    decode "$set $BASE sf_indomain_weights" $X/$BASE/brick "$m" --beam 4 --lm "$LM" --lm-weight 0.1 --length-reward 1
    decode "$set $BASE ilme_indomain_weights" $X/$BASE/brick "$m" --beam 4 --lm "$LM" --lm-weight 0.2 \
      --ilm-weight 0.1 --length-reward 1
    if [ "$BASE" = ilmt ]; then
      decode "$set mwer_sf" $X/mwer_sf/brick "$m" --beam 4 "${SF[@]}"
      decode "$set mwer_ilme" $X/mwer_ilme/brick "$m" --beam 4 "${ILME[@]}"
    fi
  done
}

case "${1:-}" in
  train) shift; train "$@" ;;
  tune) shift; tune "$@" ;;
  ilma) shift; ilma "$@" ;;
  mwer) shift; mwer "$@" ;;
  eval) eval_all ;;
  list) list ;;
  *) echo "usage: $0 train|mwer [NAME...] | tune | ilma [RHO...] | eval | list"; exit 2 ;;
esac
