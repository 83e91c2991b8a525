#!/usr/bin/env bash
# Streaming recognition on the locale corpus (recipes/locale/RESULTS.md "Streaming"): a small streaming
# model trained from scratch and the full ASR brick made streaming (causal convolutions, chunked
# attention, dynamic chunk training; full: 2,000 steps, full_long: 3,000 more), evaluated as
# `speechkit stream` runs them.
#   bash recipes/locale/stream.sh train [small|full|full_long ...]  # (default: all, in order; full needs
#                                                         # exp/locale/full/brick)
#   bash recipes/locale/stream.sh eval [small|full_long ...] # full-context WER; per chunk size: calibrate on dev,
#                                                         # stream test (WER, RTF, latency, word times,
#                                                         # confidence AUC); beam 4, CTC times, int8
#   bash recipes/locale/stream.sh fusion                  # full_long, held-out domains: beam 4 ± LM / ILME
#   bash recipes/locale/stream.sh list
# Results → $X/results.jsonl (one JSON line each). THREADS=1 measures the one-thread RTF.
set -euo pipefail
THREADS=${THREADS:-1}
C=recipes/locale/conf
X=${X:-exp/stream}
CHUNKS=${CHUNKS:-4 8 16}
DEV=(--max-utts "${DEV_UTTS:-400}")  # calibration on the first 400 dev utterances (~2,500 words); it is
                                     # stored beside each brick ($X/MODEL/stream_calibration.json)
LM=${LM:-exp/fusion/lm_lstm/brick}
source "$(dirname "$0")/lib.sh"

configs() {
  case $1 in
    small) echo $C/demo.yaml $C/stream/base.yaml $C/stream/small.yaml ;;
    full|full_long) echo $C/demo.yaml $C/full.yaml $C/stream/base.yaml $C/stream/$1.yaml ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}

list() { for m in small full full_long; do echo "$m: $(configs $m)"; done; }

train() { for m in ${@:-small full full_long}; do fit $X/$m $(configs "$m"); done; }

stream() {  # stream NAME BRICK MANIFEST [args]: one JSON line → $X/results.jsonl
  local name=$1 brick=$2 manifest=$3; shift 3
  mkdir -p "$X/hyps"
  echo "{\"name\": \"$name\", \"result\": $(speechkit stream "$brick" --manifest "$manifest" --threads "$THREADS" \
    --out "$X/hyps/${name// /_}.jsonl" "$@")}" | tee -a "$X/results.jsonl"
}

eval_() {
  local dev=data/locale/asr/dev.jsonl test=data/locale/asr/test.jsonl
  for m in ${@:-small full_long}; do
    local b=$X/$m/brick
    decode "$m full-context test" $b $test
    for c in $CHUNKS; do
      stream "$m chunk$c dev calibrate" $b $dev --chunk $c --calibrate "${DEV[@]}"
      stream "$m chunk$c test" $b $test --chunk $c
    done
    stream "$m chunk8 beam4 dev calibrate" $b $dev --chunk 8 --beam 4 --calibrate "${DEV[@]}"
    stream "$m chunk8 beam4 test" $b $test --chunk 8 --beam 4
    stream "$m chunk8 ctc-times dev calibrate" $b $dev --chunk 8 --timestamps ctc --calibrate "${DEV[@]}"
    stream "$m chunk8 ctc-times test" $b $test --chunk 8 --timestamps ctc
    stream "$m chunk8 int8 test" $b $test --chunk 8 --int8
  done
}

fusion() {  # the ILME weights tuned for the offline model (recipes/locale/fusion.sh), reused as they are
  local b=$X/full_long/brick test=data/locale/asr/heldout_test.jsonl
  stream "full_long chunk8 beam4 heldout" $b $test --chunk 8 --beam 4
  stream "full_long chunk8 beam4 SF heldout" $b $test --chunk 8 --beam 4 --lm "$LM" --lm-weight 0.9 \
    --length-reward 3
  stream "full_long chunk8 beam4 ILME heldout" $b $test --chunk 8 --beam 4 --lm "$LM" --lm-weight 0.9 \
    --ilm-weight 0.4 --length-reward 1.5
}

case ${1:-} in
  train) shift; train "$@" ;;
  eval) shift; eval_ "$@" ;;
  fusion) fusion ;;
  list) list ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
