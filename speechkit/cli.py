"""The ``speechkit`` command: prepare, fit/validate/test, decode, score, compose, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LIGHTNING_VERBS = ("fit", "validate", "test")


def _prepare(a) -> None:
    if a.corpus != "locale":
        raise SystemExit(f"unknown corpus {a.corpus!r}; available: locale")
    from .corpora.locale import prepare_locale

    langs = a.langs.split(",") if a.langs else None
    kw = {"heldout": a.heldout.split(",")} if a.heldout else {}
    summary = prepare_locale(a.out, max_utts=a.max_utts, langs=langs, workers=a.workers, **kw)
    print(json.dumps(summary.get("counts", summary), indent=1))


def _decode(a) -> None:
    import torch

    from .search.decode import DecodeOptions, cascade_manifest, decode_manifest

    if a.threads:
        torch.set_num_threads(a.threads)
    target = "brick" if a.target_lang is None else (None if a.target_lang == "text" else a.target_lang)
    opts = DecodeOptions(beam=a.beam, nbest=a.nbest)
    if a.then:
        res, sc = cascade_manifest(a.brick, a.then, a.manifest, opts, a.max_utts, target_lang=target)
    else:
        res, sc = decode_manifest(a.brick, a.manifest, opts, a.max_utts, target_lang=target)
    out = Path(a.out or Path(a.brick) / f"decode-{Path(a.manifest).stem}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in res))
    print(json.dumps({"manifest": a.manifest, "utts": len(res), **sc.to_dict(), "hyps": str(out)})
          if a.json else f"{a.manifest}: {len(res)} utterances  {sc}\nhypotheses → {out}")


def _score(a) -> None:
    from .metrics import score

    rows = []
    for n, line in enumerate(open(a.hyps, encoding="utf-8"), 1):
        try:
            r = json.loads(line)
            rows.append((r["ref"], r["hyp"]))
        except (json.JSONDecodeError, KeyError) as e:
            raise SystemExit(f"{a.hyps}:{n}: expected a JSON object with 'ref' and 'hyp' ({e})") from None
    sc = score([r for r, _ in rows], [h for _, h in rows])
    print(json.dumps(sc.to_dict()) if a.json else sc)


def _compose(a) -> None:
    from .lego.compose import compose, save_composed

    model, interface = compose(a.encoders, a.decoder, alpha=a.alpha, allow_hidden=a.allow_hidden)
    out = save_composed(model, interface, a.out)
    print(json.dumps({"brick": str(out), "length_ratio": interface["length_ratio"]}) if a.json else
          f"composed {' → '.join(a.encoders)} → decoder of {a.decoder}\nbrick written to {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechkit", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in LIGHTNING_VERBS:
        sub.add_parser(verb, help=f"LightningCLI {verb} (speechkit {verb} -c CONFIG --help)", add_help=False)
    pr = sub.add_parser("prepare", help="build a corpus and its manifests")
    pr.add_argument("corpus", help="corpus name (locale)")
    pr.add_argument("--out", default="data/locale")
    pr.add_argument("--max-utts", type=int, default=None)
    pr.add_argument("--langs", default=None, help="comma-separated target languages, e.g. de,fr,ro")
    pr.add_argument("--heldout", default=None, help="comma-separated held-out catalog prefixes")
    pr.add_argument("--workers", type=int, default=None)
    de = sub.add_parser("decode", help="decode a manifest with a brick; print WER/CER and BLEU/chrF")
    de.add_argument("brick")
    de.add_argument("manifest")
    de.add_argument("--out", default=None, help="hypotheses JSONL (default: BRICK/decode-NAME.jsonl)")
    de.add_argument("--beam", type=int, default=1, help="1 = greedy, >1 = modified beam search")
    de.add_argument("--nbest", type=int, default=1)
    de.add_argument("--max-utts", type=int, default=None)
    de.add_argument("--threads", type=int, default=None)
    de.add_argument("--target-lang", default=None,
                    help="reference: 'text' (transcript) or a translation language (default: the brick's)")
    de.add_argument("--then", default=None, metavar="MT_BRICK",
                    help="cascade: translate BRICK's transcripts with this text brick (scores translations)")
    de.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    sc = sub.add_parser("score", help="WER/CER and BLEU/chrF of a hypotheses JSONL (ref/hyp per line)")
    sc.add_argument("hyps")
    sc.add_argument("--json", action="store_true", help="print one JSON line")
    co = sub.add_parser("compose", help="join encoder brick(s) with the decoder of another brick")
    co.add_argument("encoders", nargs="+", help="encoder bricks, first to last (DIR, or DIR#N: stage N "
                    "of a chain)")
    co.add_argument("--decoder", required=True, help="the brick whose decoder side is reused")
    co.add_argument("--out", required=True, help="directory of the composed brick")
    co.add_argument("--alpha", type=float, default=None,
                    help="set the last length controller's alpha (default: adjusted only when the "
                    "length ratio is outside the decoder's recorded range)")
    co.add_argument("--allow-hidden", action="store_true",
                    help="join a decoder that reads hidden states (monolithic; the control experiment)")
    co.add_argument("--json", action="store_true")
    dm = sub.add_parser("demo", help="prepare locale, train a small transducer, decode, print WER")
    dm.add_argument("--minutes", type=float, default=None, help="training time budget")
    dm.add_argument("--max-utts", type=int, default=None)
    dm.add_argument("--out", default="exp/demo")
    dm.add_argument("--config", default=None, help="training config (default: recipes/locale/conf/demo.yaml)")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in LIGHTNING_VERBS:
        from .train.cli import run_lightning

        run_lightning(argv)
        return
    a = build_parser().parse_args(argv)
    from .lego.brick import BrickError

    try:
        _run(a)
    except BrickError as e:
        raise SystemExit(f"error: {e}") from None


def _run(a) -> None:
    if a.verb == "demo":
        from .demo import run_demo

        run_demo(minutes=a.minutes, max_utts=a.max_utts, out=a.out, config=a.config)
        return
    {"prepare": _prepare, "decode": _decode, "score": _score, "compose": _compose}[a.verb](a)


if __name__ == "__main__":
    main()
