#!/usr/bin/env bash
# LegoNN experiments on the locale corpus (recipes/locale/RESULTS.md, "LegoNN" section).
#   bash recipes/locale/lego.sh train [NAME...]  # trains the models (default: all) that have no brick yet
#   bash recipes/locale/lego.sh compose   # zero-shot compositions (+ the fine-tuning run)
#   bash recipes/locale/lego.sh eval      # decodes everything → exp/lego/results.jsonl
#   bash recipes/locale/lego.sh list      # every model's config files, a line each (tests parse them)
#   bash recipes/locale/lego.sh long      # after `train mt_de_en_long mt_ro_en_long` (3× longer):
#                                         # their zero-shot compositions, decoded → results.jsonl
# Needs `speechkit prepare locale` and the foundation's full ASR brick (exp/locale/full/brick).
# THREADS=1 trains with one thread (leaves a core free; RESULTS.md says which was used).
set -euo pipefail
THREADS=${THREADS:-2}
C=recipes/locale/conf/lego
X=exp/lego

source "$(dirname "$0")/lib.sh"

configs() {  # the config files of each model
  case $1 in
    mt_de_en) echo $C/mt_de_en.yaml ;;
    mt_ro_en) echo $C/mt_de_en.yaml $C/mt_ro_en.yaml ;;
    asr) echo $C/asr.yaml ;;
    mt_de_en_beamconv) echo $C/mt_de_en.yaml $C/beamconv.yaml ;;
    mono_de_en) echo $C/mt_de_en.yaml $C/monolithic.yaml ;;
    mono_ro_en) echo $C/mt_de_en.yaml $C/mt_ro_en.yaml $C/monolithic.yaml ;;
    chain) echo $C/asr.yaml $C/chain.yaml ;;
    mt_en_de) echo $C/mt_de_en.yaml $C/mt_en_de.yaml ;;
    mt_de_en_long) echo $C/mt_de_en.yaml $C/long.yaml ;;
    mt_ro_en_long) echo $C/mt_de_en.yaml $C/mt_ro_en.yaml $C/long.yaml ;;
    finetune_ro_de) echo $C/mt_de_en.yaml $C/mt_ro_en.yaml $C/finetune.yaml ;;  # the compose stage's
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}
MODELS="mt_de_en mt_ro_en asr mt_de_en_beamconv mono_de_en mono_ro_en chain mt_en_de"

list() {  # NAME: CONFIG... for every model this script trains
  for m in $MODELS mt_de_en_long mt_ro_en_long finetune_ro_de; do echo "$m: $(configs $m)"; done
}

train() {  # train [NAME...]: the named models (default: all), one after the other
  for m in ${@:-$MODELS}; do
    fit $X/$m $(configs $m)
  done
}

compose() {
  local o=$X/compose
  speechkit compose $X/mt_ro_en/brick --decoder $X/mt_de_en/brick --out $o/ro_enc+de_dec
  speechkit compose $X/mt_ro_en/brick --decoder $X/mt_de_en_beamconv/brick --out $o/ro_enc+de_beamconv
  speechkit compose $X/asr/brick --decoder $X/mt_de_en/brick --out $o/asr_enc+de_dec
  speechkit compose $X/asr/brick --decoder $X/mt_de_en_beamconv/brick --out $o/asr_enc+de_beamconv
  speechkit compose $X/asr/brick "$X/chain/brick#1" --decoder $X/mt_de_en/brick --out $o/asr_enc+mid+de_dec
  speechkit compose $X/mono_ro_en/brick --decoder $X/mono_de_en/brick --allow-hidden --out $o/mono_ro_enc+de_dec
  fit $X/finetune_ro_de $(configs finetune_ro_de)
}

eval_all() {  # greedy for everything; beam 4 for the MT rows as well
  local ro=data/locale/mt/ro-en/test.jsonl de=data/locale/mt/de-en/test.jsonl asr=data/locale/asr/test.jsonl
  for b in 1 4; do
    decode "de-en b$b" $X/mt_de_en/brick $de --beam $b
    decode "de-en-beamconv b$b" $X/mt_de_en_beamconv/brick $de --beam $b
    decode "ro-en b$b" $X/mt_ro_en/brick $ro --beam $b
    decode "ro-enc+de-dec b$b" $X/compose/ro_enc+de_dec $ro --beam $b
    decode "ro-enc+de-beamconv b$b" $X/compose/ro_enc+de_beamconv $ro --beam $b
    decode "ro-de finetuned b$b" $X/finetune_ro_de/brick $ro --beam $b
    decode "mono-de-en b$b" $X/mono_de_en/brick $de --beam $b
    decode "mono-ro-en b$b" $X/mono_ro_en/brick $ro --beam $b
    decode "mono ro-enc+de-dec b$b" $X/compose/mono_ro_enc+de_dec $ro --beam $b
    if [ -d $X/mt_en_de/brick ]; then
      decode "en-de b$b" $X/mt_en_de/brick data/locale/mt/en-de/test.jsonl --beam $b
    fi
  done
  decode "asr b1" $X/asr/brick $asr
  decode "asr-enc+de-dec b1" $X/compose/asr_enc+de_dec $asr
  decode "asr-enc+de-beamconv b1" $X/compose/asr_enc+de_beamconv $asr
  decode "chain-own b1" $X/chain/brick $asr
  decode "asr-enc+mid+de-dec b1" $X/compose/asr_enc+mid+de_dec $asr
}

long() {  # the 3× longer MT models: own decoders and the zero-shot swaps (greedy and beam 4)
  local o=$X/compose ro=data/locale/mt/ro-en/test.jsonl de=data/locale/mt/de-en/test.jsonl
  speechkit compose $X/mt_ro_en_long/brick --decoder $X/mt_de_en_long/brick --out $o/ro_long+de_long
  speechkit compose $X/asr/brick --decoder $X/mt_de_en_long/brick --out $o/asr_enc+de_long
  for b in 1 4; do
    decode "de-en long b$b" $X/mt_de_en_long/brick $de --beam $b
    decode "ro-en long b$b" $X/mt_ro_en_long/brick $ro --beam $b
    decode "ro-enc long+de-dec long b$b" $o/ro_long+de_long $ro --beam $b
  done
  decode "asr-enc+de-dec long b1" $o/asr_enc+de_long data/locale/asr/test.jsonl
}

case "${1:-all}" in
  train) shift; train "$@" ;; compose) compose ;; eval) eval_all ;; long) long ;; list) list ;;
  all) train; compose; eval_all ;;
  *) echo "usage: $0 [train|compose|eval|long|list|all]"; exit 2 ;;
esac
