"""The ``speechkit`` command's arguments: one parser per verb, every argument with its help and default
(``build_parser``; the verbs themselves: ``cli``)."""

from __future__ import annotations

import argparse

LIGHTNING_VERBS = ("fit", "validate", "test")
DESCRIPTION = ("The speechkit command: prepare, fit/validate/test, decode, stream, tune-fusion, adapt-ilm, "
               "export, bench, score, compose, tokenizer, run, demo, presets, plot / plot-stream / "
               "plot-align.")


def _add_fusion_options(p: argparse.ArgumentParser, grid: bool = False) -> None:
    p.add_argument("--lm", default=None, metavar="LM_BRICK",
                   help="external language model brick (shallow fusion)")
    if grid:
        p.add_argument("--lm-weights", default="0,0.1,0.2,0.3,0.4", help="comma-separated λ_LM values")
        p.add_argument("--ilm-weights", default="0,0.1,0.2", help="comma-separated λ_ILM values")
        p.add_argument("--length-rewards", default="0,0.5,1.0", help="comma-separated β values")
    else:
        p.add_argument("--lm-weight", type=float, default=0.0, help="λ_LM: weight of the external LM")
        p.add_argument("--ilm-weight", type=float, default=0.0,
                       help="λ_ILM: weight of the internal LM, subtracted (ILME)")
        p.add_argument("--length-reward", type=float, default=0.0, help="β: added per emitted token")
    p.add_argument("--no-lm-eos", action="store_true", help="leave out the LM's end-of-sentence score")


def _count_or_auto(value: str) -> int | str:
    """``--threads`` of ``demo``: a positive number or "auto"."""
    if value == "auto" or value.isdigit() and int(value) > 0:
        return value if value == "auto" else int(value)
    raise argparse.ArgumentTypeError(f"expected a number of threads or 'auto', got {value!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (``(default: 4)``), unless the help says its default itself
    or there is none (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is d for d in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _options(*names: str, threads: int | None = None, max_utts: int | None = None) -> argparse.ArgumentParser:
    """A parent parser with the options several verbs share: --threads, --device, --max-utts, --json,
    --workers."""
    p = argparse.ArgumentParser(add_help=False)
    if "device" in names:
        p.add_argument("--device", default="auto", help="where the model runs: auto (the first GPU if "
                       "there is one, else the CPU), cpu, cuda or cuda:N")
    if "workers" in names:
        p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes reading audio "
                       "and computing features (0: in this process)")
    if "threads" in names:
        p.add_argument("--threads", type=int, default=threads, help="torch threads (default: torch's)")
    if "max_utts" in names:
        p.add_argument("--max-utts", type=int, default=max_utts, help="the first N utterances only")
    if "json" in names:
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechkit", description=DESCRIPTION, epilog=(
        "Every verb takes --data-root DIR and --exp-root DIR ($SPEECHKIT_DATA, $SPEECHKIT_EXP): relative "
        "data/... and exp/... paths of the command line, configs and recipes lie there (default ./data, "
        "./exp). --debug: tracebacks."))
    sub = p.add_subparsers(dest="verb", required=True)
    add = lambda verb, help, *shared, **kw: sub.add_parser(  # noqa: E731
        verb, help=help, description=help, formatter_class=HelpFormatter,
        parents=[_options(*shared, **kw)] if shared else [])
    for verb in LIGHTNING_VERBS:
        sub.add_parser(verb, help=f"LightningCLI {verb} (speechkit {verb} -c CONFIG --help)", add_help=False)

    pr = add("prepare", "build a corpus and its manifests", "max_utts")
    pr.add_argument("corpus", help="locale (built here), librispeech, tedlium3, commonvoice, mustc, covost2, "
                    "europarl_st, iwslt14, wmt16 (README \"Recipes\")")
    pr.add_argument("--root", default=None, help="where the downloaded dataset lies (its distributed layout)")
    pr.add_argument("--out", default=None, help="manifest folder (default: data/CORPUS)")
    pr.add_argument("--parts", default=None, help="comma-separated parts/splits (default: all found)")
    pr.add_argument("--skip-bad", action="store_true",
                    help="leave out bad entries (missing/unreadable audio, empty transcripts; listed in "
                    "prepare.json) instead of stopping")
    pr.add_argument("--langs", default=None, help="comma-separated languages or pairs: locale's targets "
                    "(de,fr,ro), Common Voice language, MuST-C targets, CoVoST 2 sources, Europarl-ST pairs")
    pr.add_argument("--heldout", default=None, help="comma-separated held-out catalog prefixes")
    pr.add_argument("--workers", type=int, default=None, help="processes synthesising / reading audio "
                    "(default: the corpus's own choice)")

    de = add("decode", "decode a manifest with a brick; print WER/CER, BLEU/chrF (normalised and sacreBLEU)",
             "threads", "device", "workers", "max_utts", "json")
    de.add_argument("brick", help="brick directory (or an ONNX folder with --runtime onnx/sherpa-onnx)")
    de.add_argument("manifest", help="JSONL manifest (or Lhotse cuts) to decode; its references are scored")
    de.add_argument("--out", default=None, help="hypotheses JSONL, one line per decoded utterance (default: "
                    "beside the brick, never inside it: BRICK/../decode-MANIFEST.jsonl, or "
                    "BRICK/../NAME-decode-MANIFEST.jsonl for a brick folder NAME other than 'brick')")
    de.add_argument("--skip-bad", action="store_true", help="leave out utterances whose audio cannot be read "
                    "(missing, corrupt, empty): each is named on stderr with the reason, kept out of --out "
                    "and the scores, and listed under 'skipped' ({id, audio, error}) in the --json summary; "
                    "without it the first one stops the decode with an error naming it")
    de.add_argument("--beam", type=int, default=1, help="1 = greedy, >1 = modified beam search")
    de.add_argument("--nbest", type=int, default=1, help="hypotheses kept per utterance in --out ('nbest')")
    de.add_argument("--max-symbols", type=int, default=None, help="transducer: most labels per frame "
                    "(default: 3 for greedy search, 1 for beam search, i.e. modified beam search; streaming "
                    "models want 3; sherpa-onnx's searches take 1)")
    de.add_argument("--target-lang", default=None,
                    help="reference: 'text' (transcript) or a translation language (default: the brick's)")
    de.add_argument("--then", default=None, metavar="MT_BRICK",
                    help="cascade: translate BRICK's transcripts with this text brick (scores translations)")
    de.add_argument("--runtime", choices=("torch", "onnx", "onnx-int8", "sherpa-onnx", "sherpa-onnx-int8"),
                    default="torch", help="onnx / onnx-int8: BRICK is a folder written by `speechkit export "
                    "BRICK --onnx DIR`, run by onnxruntime on the CPU with the same searches (-int8: its "
                    "*.int8.onnx); sherpa-onnx: the same folder decoded by sherpa-onnx's offline recognizer "
                    "(its own fbank and greedy search, one label per frame)")
    _add_fusion_options(de)

    st = add("stream", "streaming recognition of audio files or raw 16-kHz s16le PCM on stdin (partials, "
             "finals, word times and confidence)", "threads", "device", "max_utts", "json", threads=1)
    st.add_argument("brick", help="a streaming transducer brick (causal Conformer, FrameStack front end)")
    st.add_argument("inputs", nargs="*", help="audio files (any format soundfile reads, any rate), or - for "
                    "raw 16-kHz s16le mono PCM on stdin (default when no input is given)")
    st.add_argument("--manifest", default=None, help="evaluate on a manifest instead: WER, RTF, latency, "
                    "word-start error and confidence AUC (hypotheses → --out)")
    st.add_argument("--calibrate", action="store_true", help="with --manifest (a dev set): fit the word-time "
                    "shift and confidence map for these settings and store them in --calibration")
    st.add_argument("--calibration", default=None, metavar="FILE", help="calibration table (JSON) that "
                    "--calibrate adds to and other runs read (default: beside the brick, never inside it: "
                    "BRICK/../stream_calibration.json, or BRICK/../NAME-stream_calibration.json for a brick "
                    "folder NAME other than 'brick'; without --calibration, a run whose settings that file "
                    "lacks reads a BRICK/stream_calibration.json shipped in the brick)")
    st.add_argument("--out", default=None, help="hypotheses JSONL of --manifest (default: beside the brick: "
                    "BRICK/../stream-MANIFEST-SETTINGS.jsonl, NAME- prefixed for a brick folder NAME other "
                    "than 'brick'; nothing is written inside a brick)")
    st.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="onnx: BRICK is a "
                    "folder written by `speechkit export BRICK --onnx DIR` from a streaming brick, run by "
                    "onnxruntime (encoder_chunk.onnx: one chunk at a time with explicit caches) on the CPU")
    st.add_argument("--chunk", type=int, default=8, help="encoder frames per chunk (40 ms each with "
                    "FrameStack 4): the latency / accuracy trade-off")
    st.add_argument("--beam", type=int, default=1, help="1 = greedy, >1 = modified beam search")
    st.add_argument("--max-symbols", type=int, default=3, help="most labels per encoder frame")
    _add_fusion_options(st)
    st.add_argument("--timestamps", choices=("transducer", "ctc"), default="transducer",
                    help="word start times from the transducer's emissions or a CTC alignment (finals)")
    st.add_argument("--endpoint-trailing", type=float, default=1.2, help="s without a new token that end a "
                    "segment with text")
    st.add_argument("--endpoint-silence", type=float, default=2.4, help="s that drop a segment without text")
    st.add_argument("--max-segment", type=float, default=20.0, help="s: the longest segment")
    st.add_argument("--block-ms", type=int, default=100, help="audio read per step (ms)")
    st.add_argument("--int8", action="store_true", help="int8 kernels (fbgemm) for the linear layers where "
                    "they are faster and within tolerance (compress.deploy)")

    tf = add("tune-fusion", "grid-search LM / ILM weights and length reward on a dev manifest",
             "threads", "device", "workers", "max_utts", "json")
    tf.add_argument("brick", help="the ASR brick whose fusion weights are tuned")
    tf.add_argument("manifest", help="dev manifest the grid is scored on (encoded once)")
    _add_fusion_options(tf, grid=True)
    tf.add_argument("--beam", type=int, default=4, help="beam size of the fused search")
    tf.add_argument("--plot", default=None, metavar="PNG", help="also draw WER over the (λ_LM, λ_ILM) grid "
                    "(each cell: its best length reward) into this PNG")

    pl = add("plot", "training and validation curves (loss, WER/CER or BLEU, learning rate) of fit runs → "
             "RUN_DIR/curves.png")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a fit run's folder (its default_root_dir, "
                    "holding lightning_logs/version_*/metrics.csv)")
    pl.add_argument("--out", default=None, help="the PNG (one run only; default RUN_DIR/curves.png)")
    ps = add("plot-stream", "WER and latency against the chunk size, from `speechkit stream --manifest` "
             "summaries (its printed JSON lines, saved to files)")
    ps.add_argument("results", nargs="+", help="files of stream --manifest summary lines (any chunk sizes)")
    ps.add_argument("--out", default="stream-chunks.png", help="the PNG (default: %(default)s)")
    pa = add("plot-align", "one utterance's spectrogram with reference and hypothesis word times")
    pa.add_argument("hyps", help="hypotheses of `speechkit stream --manifest` (word times per utterance)")
    pa.add_argument("manifest", help="the manifest streamed (the utterance's audio)")
    pa.add_argument("--id", default=None, help="the utterance (default: the first of HYPS)")
    pa.add_argument("--out", default=None, help="the PNG (default: beside HYPS, HYPS_STEM-ID.png)")

    ad = add("adapt-ilm", "ILMA: adapt a transducer's internal LM to target-domain text (trains the joiner's "
             "last layer only)", "threads", "device", "json")
    ad.add_argument("brick", help="transducer brick (ideally trained with ilm_weight > 0)")
    ad.add_argument("text", help="target-domain text: a JSONL manifest or a plain text file, "
                    "one sentence per line")
    ad.add_argument("--out", required=True, help="directory of the adapted brick (not BRICK nor a folder "
                    "inside it: a brick is read-only)")
    ad.add_argument("--valid", default=None, help="held-out text for the perplexity (default: TEXT)")
    ad.add_argument("--rho", type=float, default=0.5,
                    help="weight of the KL term to the unadapted internal LM")
    ad.add_argument("--steps", type=int, default=500, help="training steps")
    ad.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ad.add_argument("--max-tokens", type=int, default=2000, help="tokens per batch")
    ad.add_argument("--seed", type=int, default=0, help="random seed (batch order)")

    ex = add("export", "one-shot N:M / int8 compression of a trained brick (no training; a brick trained "
             "with a compress: section is exported folded by fit itself), or a brick as ONNX models "
             "(--onnx): transducers in sherpa-onnx's layout, attention models (AED, MT, STAST) and LMs for "
             "onnxruntime", "json")
    ex.add_argument("brick", help="the trained brick to compress or export (read only)")
    ex.add_argument("--out", help="the compressed brick's directory")
    ex.add_argument("--onnx", metavar="DIR", help="write the ONNX models here instead: a transducer's "
                    "encoder/decoder/joiner.onnx + tokens.txt (sherpa-onnx's offline layout), an attention "
                    "model's encoder/decoder.onnx, an LM's lm.onnx")
    ex.add_argument("--int8", action="store_true", help="with --onnx: also *.int8.onnx (onnxruntime's "
                    "dynamic int8 quantisation; a compressed brick's int8 weights keep their own codes)")
    ex.add_argument("--sparsity", default=None, metavar="N:M", help="e.g. 2:4 (magnitude, along K)")
    ex.add_argument("--bits", type=int, default=None, help="weight bits (8: int8 storage)")
    ex.add_argument("--per-tensor", action="store_true",
                    help="one weight step per tensor (default: per channel)")

    be = add("bench", "deploy a brick (per-layer fastest correct kernel) and time its decode against the "
             "fp32 brick, side by side", "threads", "device", "max_utts", "json", threads=1, max_utts=100)
    be.add_argument("brick", help="the (compressed) brick to deploy")
    be.add_argument("manifest", help="manifest decoded for the timing and WER")
    be.add_argument("--against", default=None, help="reference brick (default: BRICK itself, not deployed)")
    be.add_argument("--beam", type=int, default=1, help="1 = greedy, >1 = modified beam search")
    be.add_argument("--tolerance", type=float, default=0.03, help="largest relative error per layer")
    be.add_argument("--ptq", action="store_true", help="allow int8 kernels on weights not trained for int8")
    be.add_argument("--no-deploy", action="store_true", help="time BRICK as loaded")
    be.add_argument("--cuda-graphs", action="store_true", help="on CUDA, replay BRICK's encoder from CUDA "
                    "graphs captured per (batch, frames) bucket (speechkit.nn.device.CudaGraphed)")

    sc = add("score", "WER/CER and BLEU/chrF of a hypotheses JSONL (ref/hyp per line)", "json")
    sc.add_argument("hyps", help="hypotheses JSONL written by decode (ref and hyp per line)")

    co = add("compose", "join encoder brick(s) with the decoder of another brick", "json")
    co.add_argument("encoders", nargs="+", help="encoder bricks, first to last (DIR, or DIR#N: stage N "
                    "of a chain)")
    co.add_argument("--decoder", required=True, help="the brick whose decoder side is reused")
    co.add_argument("--out", required=True, help="directory of the composed brick")
    co.add_argument("--alpha", type=float, default=None,
                    help="set the last length controller's alpha (default: adjusted only when the "
                    "length ratio is outside the decoder's recorded range)")
    co.add_argument("--allow-hidden", action="store_true",
                    help="join a decoder that reads hidden states (monolithic; the control experiment)")

    tk = add("tokenizer", "train a sentencepiece tokenizer on a manifest's normalised transcripts (or "
             "translations)")
    tk.add_argument("manifest", help="JSONL manifest (or a plain text file, one sentence per line)")
    tk.add_argument("--out", required=True, help="the .model file to write")
    tk.add_argument("--vocab-size", type=int, default=256, help="sentencepiece pieces")
    tk.add_argument("--target-lang", default=None, help="train on this translation instead of the transcript")
    tk.add_argument("--force", action="store_true", help="overwrite an existing model")

    sh = add("shard", "write a manifest's fbank features as shards that training reads with memory that does "
             "not grow with the corpus (any split of a speech data module may name the folder)")
    sh.add_argument("manifest", help="JSONL manifest whose audio is featurised")
    sh.add_argument("--out", required=True,
                    help="the shard folder (a rerun keeps the shards already written)")
    sh.add_argument("--shard-mb", type=float, default=128, help="features per shard, in MB")
    sh.add_argument("--num-mel-bins", type=int, default=80, help="fbank channels (the data module's)")
    sh.add_argument("--workers", type=int, default=2, help="processes computing features")

    lh = add("lhotse", "convert between a speechkit manifest and a Lhotse CutSet (either way; any verb also "
             "reads Lhotse cuts or supervisions files where it reads a manifest)")
    lh.add_argument("input", help="a speechkit manifest (→ CutSet) or a Lhotse cuts / supervisions file "
                    "(→ speechkit manifest)")
    lh.add_argument("--out", required=True, help="cuts.jsonl.gz, or manifest.jsonl")

    rn = add("run", "run a recipe's numbered, resumable stages (RECIPE/stages.yaml, or a stages file of an "
             "experiment)")
    rn.add_argument("recipe", help="a recipe folder (its stages.yaml), e.g. recipes/locale, or a stages file "
                    "in one, e.g. recipes/locale/lego.yaml")
    rn.add_argument("--stage", default=None, help="first stage (number or name; default: the first)")
    rn.add_argument("--stop-stage", default=None, help="last stage (number or name; default: the last)")
    rn.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a variable of stages.yaml (repeatable), e.g. --set corpus=/data/LS")
    rn.add_argument("--fit-args", default="", metavar='"ARGS"',
                    help='arguments added to every fit stage (write --fit-args="…"), e.g. '
                    '--fit-args="--trainer.devices=8 --trainer.strategy=ddp"; a stage counts as done by its '
                    'brick whatever they are')
    rn.add_argument("--force", action="store_true", help="rerun the selected stages even when done")
    rn.add_argument("--list", action="store_true", help="list the stages, their commands and whether done")
    rn.add_argument("--dry-run", action="store_true", help="print what would run")
    rn.add_argument("--in-process", action="store_true", help="run speechkit commands inside this process "
                    "(no start-up per command: faster for short stages, e.g. tests)")

    dm = add("demo", "prepare locale, train a small transducer, decode, print WER", "max_utts")
    dm.add_argument("--minutes", type=float, default=None, help="training time budget (default: the config's "
                    "trainer.max_time, 10.5 min in demo.yaml)")
    dm.add_argument("--out", default="exp/demo", help="run directory (brick, checkpoints, decode-test.jsonl)")
    dm.add_argument("--threads", default="auto", type=_count_or_auto,
                    help="torch threads for training: a number, or auto (at most the CPUs this process may "
                    "use, re-chosen while training to what is fastest now)")
    dm.add_argument("--config", default=None, help="training config (default: recipes/locale/conf/demo.yaml)")
    add("presets", "list the recipe configs and brick presets, each with its one-line description")
    return p
