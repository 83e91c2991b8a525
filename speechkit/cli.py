"""The ``speechkit`` command: prepare, fit/validate/test, decode, stream, tune-fusion, adapt-ilm, export,
bench, score, compose, tokenizer, run, demo, presets, plot / plot-stream / plot-align.

The verbs' arguments are defined in ``cli_args``; each verb hands its arguments to one library call
(``speechkit.pipelines``, ``speechkit.corpora``, ``speechkit.train``, ``speechkit.recipe``) and prints what
it returns. The toolkit's own errors end in one ``error: …`` line (``main``)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from .cli_args import LIGHTNING_VERBS, build_parser
from .files import ROOTS, rooted

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
