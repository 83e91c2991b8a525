# Shared helpers of the locale experiment scripts (lego.sh, stast.sh); source it, then set X (the
# experiment directory) and THREADS. FIT_ARGS: extra `speechkit fit` arguments for every run,
# e.g. FIT_ARGS="--trainer.max_steps=1500 --trainer.max_time=00:02:00:00" (equal steps across runs).

fit() {  # fit ROOT CONFIG... : train unless ROOT/brick exists (resumes a killed run); log → ROOT.log
  local root=$1; shift
  [ -f "$root/brick/weights.safetensors" ] && { echo "have $root/brick"; return; }
  mkdir -p "$(dirname "$root")"
  local resume=(); [ -f "$root/checkpoints/last.ckpt" ] && resume=(--ckpt_path last)
  speechkit fit "${@/#/--config=}" --trainer.default_root_dir="$root" --threads "$THREADS" ${FIT_ARGS:-} "${resume[@]}" 2>&1 \
    | tr '\r' '\n' | grep -v "it/s" > "$root.log" || { tail -20 "$root.log"; exit 1; }
}

decode() {  # decode NAME BRICK MANIFEST [args]: one JSON line per result → $X/results.jsonl
  local name=$1 brick=$2 manifest=$3; shift 3
  mkdir -p "$X/hyps"
  echo "{\"name\": \"$name\", \"result\": $(speechkit decode "$brick" "$manifest" --json --threads "$THREADS" \
    --out "$X/hyps/${name// /_}.jsonl" "$@")}" | tee -a "$X/results.jsonl"
}
