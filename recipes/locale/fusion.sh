#!/usr/bin/env bash
# The LM-fusion domain-shift experiment on the locale corpus (recipes/locale/RESULTS.md, "LM fusion"):
# ASR trained on the in-domain catalogs, an LM on the text of the held-out-domain catalogs (git +
# PostgreSQL, heldout_train; disjoint from heldout_test), tested on held-out-domain audio and in-domain.
#   bash recipes/locale/fusion.sh train [NAME...]  # lm_transformer lm_lstm ilmt (default: all three)
#   bash recipes/locale/fusion.sh tune             # tune-fusion grids on heldout_dev → $X/tune-*.jsonl
#   bash recipes/locale/fusion.sh ilma [RHO...]    # adapt-ilm on heldout_train text (default ρ: 0.1 0.5 0.9)
#   bash recipes/locale/fusion.sh mwer [NAME...]   # mwer_sf mwer_ilme fine-tuning (after tune: the weights)
#   bash recipes/locale/fusion.sh eval             # every condition on heldout_test and test → $X/results.jsonl
# The fusion weights (SF_*, ILME_*; defaults: the values tune picked, RESULTS.md) and ILMA_RHO can be
# overridden from the environment. Needs `speechkit prepare locale` and exp/locale/full/brick.
set -euo pipefail
THREADS=${THREADS:-2}
C=recipes/locale/conf
X=${X:-exp/fusion}
LM=$X/lm_transformer/brick
SF=(--lm "$LM" --lm-weight "${SF_LM:-0.3}" --length-reward "${SF_LR:-0.5}")
ILME=(--lm "$LM" --lm-weight "${ILME_LM:-0.4}" --ilm-weight "${ILME_ILM:-0.2}" --length-reward "${ILME_LR:-0.5}")
ILMA_RHO=${ILMA_RHO:-0.5}
source "$(dirname "$0")/lib.sh"

configs() {
  case $1 in
    lm_transformer) echo $C/fusion/lm_transformer.yaml ;;
    lm_lstm) echo $C/fusion/lm_transformer.yaml $C/fusion/lm_lstm.yaml ;;
    ilmt|mwer_sf|mwer_ilme) echo $C/demo.yaml $C/full.yaml $C/fusion/$1.yaml ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

list() { for m in lm_transformer lm_lstm ilmt mwer_sf mwer_ilme; do echo "$m: $(configs $m)"; done; }

train() { for m in ${@:-lm_transformer lm_lstm ilmt}; do fit $X/$m $(configs "$m"); done; }

mwer() {  # the weights of the decode below go into training too
  for m in ${@:-mwer_sf mwer_ilme}; do
    local w=("--model.init_args.lm_weight=${SF_LM:-0.3}" "--model.init_args.length_reward=${SF_LR:-0.5}")
    [ "$m" = mwer_ilme ] && w=("--model.init_args.lm_weight=${ILME_LM:-0.4}"
      "--model.init_args.ilm_weight=${ILME_ILM:-0.2}" "--model.init_args.length_reward=${ILME_LR:-0.5}")
    FIT_ARGS="${FIT_ARGS:-} ${w[*]}" fit $X/$m $(configs "$m")
  done
}

tune() {
  local dev=data/locale/asr/heldout_dev.jsonl
  speechkit tune-fusion $X/ilmt/brick $dev --lm "$LM" --lm-weights 0,0.1,0.2,0.3,0.4,0.5 --ilm-weights 0 \
    --length-rewards 0,0.5,1,1.5 --json --threads "$THREADS" | tee $X/tune-sf.jsonl
  speechkit tune-fusion $X/ilmt/brick $dev --lm "$LM" --lm-weights 0.3,0.4,0.5,0.6 --ilm-weights 0.1,0.2,0.3 \
    --length-rewards 0.5,1,1.5 --json --threads "$THREADS" | tee $X/tune-ilme.jsonl
}

ilma() {
  for rho in ${@:-0.1 0.5 0.9}; do
    [ -d $X/ilma_rho$rho ] || speechkit adapt-ilm $X/ilmt/brick data/locale/asr/heldout_train.jsonl \
      --valid data/locale/asr/heldout_dev.jsonl --rho "$rho" --out $X/ilma_rho$rho --threads "$THREADS" --json
    decode "heldout_dev ilma rho$rho" $X/ilma_rho$rho data/locale/asr/heldout_dev.jsonl --beam 4
  done
}

eval_all() {
  for set in heldout_test test; do
    local m=data/locale/asr/$set.jsonl
    decode "$set no_lm" $X/ilmt/brick "$m" --beam 4
    decode "$set sf" $X/ilmt/brick "$m" --beam 4 "${SF[@]}"
    decode "$set ilme" $X/ilmt/brick "$m" --beam 4 "${ILME[@]}"
    decode "$set ilma" $X/ilma_rho$ILMA_RHO "$m" --beam 4
    decode "$set mwer_sf" $X/mwer_sf/brick "$m" --beam 4 "${SF[@]}"
    decode "$set mwer_ilme" $X/mwer_ilme/brick "$m" --beam 4 "${ILME[@]}"
  done
}

case "${1:-}" in
  train) shift; train "$@" ;;
  tune) tune ;;
  ilma) shift; ilma "$@" ;;
  mwer) shift; mwer "$@" ;;
  eval) eval_all ;;
  list) list ;;
  *) echo "usage: $0 train|mwer [NAME...] | tune | ilma [RHO...] | eval | list"; exit 2 ;;
esac
