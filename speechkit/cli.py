"""The ``speechkit`` command: prepare, fit/validate/test, decode, stream, tune-fusion, adapt-ilm, export,
bench, score, compose, tokenizer, run, demo, presets, plot / plot-stream / plot-align.

Argument parsing only: each verb hands its arguments to one library call (``speechkit.pipelines``,
``speechkit.corpora``, ``speechkit.train``, ``speechkit.recipe``) and prints what it returns. The
toolkit's own errors end in one ``error: …`` line (``main``)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from .files import ROOTS, rooted

LIGHTNING_VERBS = ("fit", "validate", "test")
ROOT_VARIABLES = {f"--{part}-root": variable for part, variable in ROOTS.items()}  # --data-root, --exp-root


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _prepare(a) -> None:
    from .corpora import prepare
    from .corpora.common import listing

    split = lambda v: v.split(",") if v else None  # noqa: E731
    out = a.out or f"data/{a.corpus}"
    summary = prepare(a.corpus, out=out, root=a.root, max_utts=a.max_utts, langs=split(a.langs),
                      heldout=split(a.heldout), parts=split(a.parts), workers=a.workers, skip_bad=a.skip_bad)
    print(json.dumps(summary["manifests"], indent=1))
    if summary["problems"]:
        bad = summary["problems"]
        print(f"left out {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} (all listed in "
              f"{out}/prepare.json):\n{listing(bad)}", file=sys.stderr)


def _device(a):
    from .nn.device import resolve_device

    return resolve_device(a.device)


def _decode(a) -> None:
    from .pipelines.decode import DecodeOptions, decode_to_file, make_fusion

    _threads(a.threads)
    device = _device(a)
    target = "brick" if a.target_lang is None else (None if a.target_lang == "text" else a.target_lang)
    if a.runtime != "torch":
        from .pipelines.onnx import decode_runtime_to_file, runtime_fusion

        fusion = a.lm or a.lm_weight or a.ilm_weight or a.length_reward
        if a.ilm_weight or a.then or a.device not in ("auto", "cpu") or (fusion and "sherpa" in a.runtime):
            raise SystemExit(f"error: --runtime {a.runtime} decodes one brick on the CPU, fused with an "
                             "external LM (--lm) only by --runtime onnx (the internal LM, --ilm-weight, is "
                             "not exported)")
        fusion = runtime_fusion(a.brick, a.lm, a.lm_weight, a.length_reward, not a.no_lm_eos)
        opts = DecodeOptions(beam=a.beam, nbest=a.nbest, max_symbols=a.max_symbols, skip_bad=a.skip_bad,
                             num_workers=a.workers, progress=not a.json, fusion=fusion)
        _print_decoded(a, *decode_runtime_to_file(a.brick, a.manifest, a.runtime, opts, a.out, a.max_utts,
                                                  a.threads or 1))
        return
    fusion = make_fusion(a.brick, a.lm, a.lm_weight, a.ilm_weight, a.length_reward, not a.no_lm_eos, device)
    opts = DecodeOptions(beam=a.beam, nbest=a.nbest, fusion=fusion, max_symbols=a.max_symbols,
                         skip_bad=a.skip_bad, device=device, num_workers=a.workers)
    _print_decoded(a, *decode_to_file(a.brick, a.manifest, opts, a.out, a.then, a.max_utts, target))


def _print_decoded(a, summary: dict, sc) -> None:
    skipped = summary["skipped"] if a.skip_bad else summary.pop("skipped")
    if skipped:
        print(f"left out {len(skipped)} unreadable utterance{'s' * (len(skipped) > 1)} (--skip-bad):\n"
              + "\n".join(f"  {r['id']}: {r['error']}" for r in skipped), file=sys.stderr)
    print(json.dumps(summary) if a.json else f"{a.manifest}: {summary['utts']} utterances"
          f"{f' ({len(skipped)} unreadable left out)' if skipped else ''}  {sc}\n"
          f"hypotheses → {summary['hyps']}")


def _tune_fusion(a) -> None:
    from .pipelines.decode import DecodeOptions, tune_fusion

    _threads(a.threads)
    grid = [[float(w) for w in g.split(",")] for g in (a.lm_weights, a.ilm_weights, a.length_rewards)]
    keys = ("lm_weight", "ilm_weight", "length_reward", "wer", "cer", "seconds")
    if not a.json:
        print("".join(f"{k:>14}" for k in keys))

    def report(row):
        print(json.dumps(row) if a.json else "".join(f"{row[k]:>14}" for k in keys), flush=True)

    opts = DecodeOptions(beam=a.beam, progress=False, device=_device(a), num_workers=a.workers)
    rows = tune_fusion(a.brick, a.manifest, a.lm, *grid, opts,
                       a.max_utts, lm_eos=not a.no_lm_eos, report=report)
    best = min(rows, key=lambda r: (r["wer"], r["cer"]))
    print(json.dumps({"best": best}) if a.json else
          f"best: --lm-weight {best['lm_weight']} --ilm-weight {best['ilm_weight']} "
          f"--length-reward {best['length_reward']}  (WER {best['wer']}%, CER {best['cer']}%)")
    if a.plot:
        from .pipelines.plots import plot_fusion

        print(f"heatmap → {plot_fusion(rows, a.plot, os.path.basename(a.manifest))}", file=sys.stderr)


def _plot(a) -> None:
    from .pipelines import plots

    if a.verb == "plot":
        out = [plots.plot_curves(run, a.out if len(a.runs) == 1 else None) for run in a.runs]
    elif a.verb == "plot-stream":
        out = [plots.plot_stream(plots.read_stream_results(a.results), a.out)]
    else:
        out = [plots.alignment_from_files(a.hyps, a.manifest, a.id, a.out)]
    print("\n".join(map(str, out)))


def _adapt_ilm(a) -> None:
    from .pipelines.bricks import check_new_brick
    from .train.ilma import run_ilma

    check_new_brick(a.out, a.brick)
    _threads(a.threads)
    summary = run_ilma(a.brick, a.text, a.out, a.valid, a.rho, a.steps, a.lr, a.max_tokens, a.seed,
                       _device(a))
    print(json.dumps(summary) if a.json else
          f"internal-LM perplexity on {summary['valid']}: {summary['ilm_ppl_before']} → "
          f"{summary['ilm_ppl_after']}\nadapted brick written to {a.out}")


def _export(a) -> None:
    from .compress.apply import CompressConfig, QuantConfig, SparsityConfig
    from .pipelines.bricks import export_brick

    if (a.out is None) == (a.onnx is None):
        raise SystemExit("error: give --out DIR (compression) or --onnx DIR (ONNX models), one of them")
    if a.onnx:
        from .pipelines.onnx_export import export_onnx

        res = export_onnx(a.brick, a.onnx, int8=a.int8)
        print(json.dumps(res) if a.json else f"{a.brick} → {a.onnx}: {', '.join(res['files'])} (sherpa-onnx's"
              f" offline transducer layout; vocabulary {res['vocab_size']} with the blank at 0)")
        return
    if a.int8:
        raise SystemExit("error: --int8 goes with --onnx (a compressed brick's int8: --bits 8)")
    sp = None
    if a.sparsity:
        try:
            n, m = (int(v) for v in a.sparsity.split(":"))
        except ValueError:
            raise SystemExit(f"error: --sparsity: expected N:M such as 2:4, got {a.sparsity!r}") from None
        sp = SparsityConfig(n, m)
    q = QuantConfig(a.bits, None, per_channel=not a.per_tensor) if a.bits else None
    if sp is None and q is None:
        raise SystemExit("error: give --sparsity N:M and/or --bits B")
    res = export_brick(a.brick, a.out, CompressConfig(sparsity=sp, quant=q))
    print(json.dumps(res) if a.json else
          f"{a.brick} → {a.out}: {res['coverage']['compressed']:,} of {res['coverage']['total']:,} "
          f"parameters compressed, weights {res['dense_bytes']:,} → {res['bytes']:,} bytes")


def _bench(a) -> None:
    from .pipelines.bench import bench

    _threads(a.threads)
    s = bench(a.brick, a.manifest, a.against, a.max_utts, a.beam, a.tolerance, a.ptq, not a.no_deploy,
              progress=not a.json, device=_device(a), cuda_graphs=a.cuda_graphs)
    if a.json:
        print(json.dumps({k: v for k, v in s.items() if k != "plan"}))
        return
    if s["plan"]:
        print(s["plan"])
    for k, r in s["results"].items():
        print(f"{k}: " + "  ".join(f"{f}={v}" for f, v in r.items()))
    print(f"speed-up {s['speedup']}× (encoder {s['encoder_speedup']}×) on {s['device']}")


def _score(a) -> None:
    from .pipelines.decode import score_file

    sc = score_file(a.hyps)
    print(json.dumps(sc.to_dict()) if a.json else sc)


def _compose(a) -> None:
    from .pipelines.bricks import check_new_brick
    from .pipelines.compose import compose, save_composed

    check_new_brick(a.out, a.decoder, *(e.partition("#")[0] for e in a.encoders))
    model, interface = compose(a.encoders, a.decoder, alpha=a.alpha, allow_hidden=a.allow_hidden)
    out = save_composed(model, interface, a.out)
    print(json.dumps({"brick": str(out), "length_ratio": interface["length_ratio"]}) if a.json else
          f"composed {' → '.join(a.encoders)} → decoder of {a.decoder}\nbrick written to {out}")


def _shard(a) -> None:
    from .data.shards import write_shards
    from .features import FbankConfig

    spec = write_shards(a.manifest, a.out, FbankConfig(num_mel_bins=a.num_mel_bins), a.shard_mb, a.workers)
    print(f"{spec['utts']} utterances, {spec['frames']} frames in {len(spec['shards'])} shards → {a.out} "
          f"(train with data.init_args.train={a.out})")


def _lhotse(a) -> None:
    from .data.lhotse_io import lhotse_kind, write_cuts
    from .data.manifest import load_manifest, save_manifest

    utts = load_manifest(a.input)
    if lhotse_kind(a.input):
        save_manifest(utts, a.out)
        print(f"{len(utts)} utterances → {a.out} (speechkit manifest)")
    else:
        print(f"{write_cuts([vars(u) for u in utts], a.out)} cuts → {a.out} (Lhotse CutSet)")


def _tokenizer(a) -> None:
    from .data.dataset import manifest_tokenizer
    from .tokenizer import Tokenizer

    if os.path.exists(a.out) and not a.force:
        have = Tokenizer(a.out).vocab_size
        if have != a.vocab_size:
            raise SystemExit(f"error: {a.out} exists with {have} pieces, not --vocab-size {a.vocab_size}; "
                             "--force retrains it")
        print(f"have {a.out} ({have} pieces; --force retrains it)")
        return
    tok = manifest_tokenizer(a.manifest, a.out, a.vocab_size, a.target_lang)
    print(f"tokenizer ({tok.vocab_size} pieces) → {a.out}")


def _run_recipe(a) -> None:
    from .recipe import in_process, load_stages, parse_sets, run_command, run_stages, select

    stages = select(load_stages(a.recipe, parse_sets(a.set), shlex.split(a.fit_args)), a.stage, a.stop_stage)
    if a.list:
        for s in stages:
            print(f"{s.number:2d} {s.name:12s} {'done' if s.done() else 'todo'}  {s.command}")
        return
    call = in_process(main) if a.in_process else run_command
    run_stages(stages, force=a.force, dry_run=a.dry_run, call=call)


def _demo(a) -> None:
    from .demo import run_demo

    run_demo(minutes=a.minutes, max_utts=a.max_utts, out=a.out, config=a.config, threads=a.threads)


def _presets(a) -> None:
    from .recipe import presets

    found = presets()
    width = max(len(p) for p, _ in found)
    print("recipe configs (speechkit fit -c PATH [-c PATH …]) and brick presets (modules/):")
    for path, description in found:
        print(f"  {path:<{width}}  {description or '(no description: give it a leading # comment)'}")


def _stream(a) -> None:
    from .cli_stream import run

    run(a)


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
    p = argparse.ArgumentParser(prog="speechkit", description=__doc__.split("\n\n")[0], epilog=(
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


VERBS = {"prepare": _prepare, "decode": _decode, "stream": _stream, "tune-fusion": _tune_fusion,
         "adapt-ilm": _adapt_ilm, "export": _export, "bench": _bench, "score": _score, "compose": _compose,
         "tokenizer": _tokenizer, "shard": _shard, "lhotse": _lhotse, "run": _run_recipe, "demo": _demo,
         "presets": _presets, "plot": _plot, "plot-stream": _plot, "plot-align": _plot}


def main(argv: list[str] | None = None) -> None:
    """Run one verb. The toolkit's own errors, bad configs, missing files, bad audio and bad manifests end
    in one ``error: …`` line and exit status 1; ``--debug`` (or ``SPEECHKIT_DEBUG=1``) shows the traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("SPEECHKIT_DEBUG", "") not in ("", "0")
    argv = take_roots([a for a in argv if a != "--debug"])
    try:
        if argv and argv[0] in LIGHTNING_VERBS:
            from .train.cli import run_lightning

            run_lightning(argv)
            return
        a = build_parser().parse_args(argv)
        for key, value in vars(a).items():  # data/… and exp/… paths under the roots
            setattr(a, key, [rooted(v) for v in value] if isinstance(value, list) else rooted(value))
        VERBS[a.verb](a)
    except BrokenPipeError:  # the reader went away (`speechkit stream … | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except Exception as e:
        message = user_error(e)
        if message is None or debug:
            raise
        raise SystemExit(f"error: {message}") from None


def take_roots(argv: list[str]) -> list[str]:
    """``argv`` without ``--data-root DIR`` / ``--exp-root DIR`` (any verb, anywhere on the line), which
    set ``$SPEECHKIT_DATA`` / ``$SPEECHKIT_EXP`` (absolute; the commands a recipe runs inherit them): where
    relative ``data/…`` and ``exp/…`` paths of the command line, configs and recipes lie
    (``files.rooted``)."""
    rest, it = [], iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in ("--data-root", "--exp-root"):
            value = value if eq else next(it, None)
            if not value or value.startswith("-"):
                raise SystemExit(f"error: {name} needs a folder")
            os.environ[ROOT_VARIABLES[name]] = os.path.abspath(os.path.expanduser(value))
        else:
            rest.append(arg)
    return rest


def user_error(e: BaseException) -> str | None:
    """The one-line message of an error the user caused (a file, line or key they gave), None for a bug."""
    import yaml

    from .errors import SpeechkitError

    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    known = (SpeechkitError, OSError, ValueError, yaml.YAMLError, argparse.ArgumentError)
    foreign = ("ArgumentError", "MisconfigurationException")  # jsonargparse's, Lightning's config errors
    if isinstance(e, known) or type(e).__name__ in foreign:
        return " ".join(str(e).split()) or type(e).__name__
    return None


if __name__ == "__main__":
    main()
