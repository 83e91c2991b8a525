"""speechkit's transducer beam search vs torchaudio's ``RNNTBeamSearch``, same model, side by side.

    python benchmarks/streaming.py BRICK MANIFEST [--max-utts N] [--beam 4] [--threads 1] [--chunk C]
                                   [--ta-rank norm|score] [--step-max-tokens 100] [--json OUT]

Both searches run in one process, on one thread by default, on THE SAME encoder output of the same
model with the same beam. Each utterance is encoded once (batch 1; features and encoder outside the
timing); then both searches are timed with ``time.perf_counter``, in alternating order from one
utterance to the next, so machine load affects both alike. Each timed region holds everything from
the encoder output to the hypotheses: ``model.decoder_input`` (identity unless the brick has a LegoNN
ingestor), the joiner's encoder projection and the search. ``--chunk C`` sets
``model.encoder.body.chunk = C`` before encoding (a streaming model's chunked-attention output).

The torchaudio side. ``TorchaudioRNNT`` adapts a speechkit ``Transducer`` to the three methods that
``RNNTBeamSearch`` calls on its model (torchaudio ``RNNT``'s interface):

- ``transcribe(sources (1, T, E), lengths)`` → the joiner's encoder projection (1, T, J). The search
  is run through the public ``RNNTBeamSearch.forward(input, length, beam_width)``, which calls
  ``transcribe`` and then ``_search``; ``input`` is the speechkit encoder output (what the joiner
  reads), so that the only model work is the projection speechkit's search does too, and the timed
  call is the search alone.
- ``predict(targets (N, U), lengths, state)`` → (joiner-projected predictor outputs (N, U, J),
  lengths, state): one speechkit predictor ``step`` per target column. torchaudio starts every search
  with ``predict([[blank]], [1], None)``; speechkit's predictors use the blank id as start of
  sentence too, so ``state=None`` is ``predictor.initial_state`` and the first output is the one
  speechkit's search starts from.
- ``join(src (1, 1, J), ·, tgt (N, 1, J), ·)`` → logits (N, 1, 1, V+1) =
  ``joiner.joint(src, tgt)``, i.e. ``joiner.forward(enc, pred)`` with both projections cached, as
  speechkit's search caches them. torchaudio applies ``log_softmax`` (temperature 1) itself, and
  takes the LAST output as blank: speechkit's blank is V, the last of V+1. Logits are returned.

States: torchaudio keeps one state per hypothesis, a ``List[List[Tensor]]`` whose tensors have the
hypothesis on dim 0; it batches hypotheses with ``torch.cat`` on dim 0 (``_batch_state``) and splits
them with ``index_select(0, ·)`` (``_slice_state``). The stateless predictor's state (N, context-1)
label ids is kept as ``[[ids]]``; the LSTM predictor's (h, c), each (layers, N, P), as
``[[h (N, layers, P), c (N, layers, P)]]``. (The Transformer predictor's growing KV cache has a
per-hypothesis capacity that ``torch.cat`` cannot batch: not supported.)

The two searches are DIFFERENT ALGORITHMS, so their hypotheses may differ:

- speechkit (``speechkit.search.transducer.beam_search``): modified beam search, at most one label
  per frame, B·K hypotheses batched, hypotheses reaching the same labels merged (log-sum-exp),
  ranked by total log-probability. A label there consumes its frame (no blank follows it), so its
  scores sum paths of a different lattice than the RNN-T loss's and may even exceed log P(y|x).
- torchaudio: "standard" RNN-T beam search (Graves 2012, Algorithm 1): within a frame it keeps
  expanding (up to ``step_max_tokens`` labels per frame, default 100) while a non-blank extension
  beats the K-th best hypothesis that has already emitted blank, merges hypotheses with the same
  labels, and after each frame keeps the top K by its ``hypo_sort_key`` — by default the score
  divided by (labels + 2), a length normalisation (``--ta-rank score`` ranks by the raw score
  instead). Its hypotheses start with the blank it seeded the search with (stripped here; it is
  the "+ 2"'s second 1).

Both WERs are reported, with how many utterances get the identical best label sequence (and, where
they differ, which search's best hypothesis is more probable under the model: log P(y|x) summed
over all alignments, i.e. −RNN-T loss, computed outside the timing; the two searches' own scores
sum different, pruned sets of alignments and are not comparable), and the speed ratio
(torchaudio time / speechkit time; > 1: speechkit is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn
from torchaudio.models import RNNTBeamSearch

from speechkit.data.dataset import collate
from speechkit.data.manifest import load_manifest
from speechkit.lego.brick import load_brick
from speechkit.lego.transducer import LSTMPredictor, StatelessPredictor
from speechkit.metrics import score
from speechkit.search.decode import brick_dataset
from speechkit.search.transducer import beam_search
from speechkit.tokenizer import Tokenizer


class TorchaudioRNNT(nn.Module):
    """A speechkit ``Transducer`` behind torchaudio ``RNNT``'s ``transcribe`` / ``predict`` / ``join``
    (what ``RNNTBeamSearch`` calls). ``transcribe`` reads the speechkit encoder output (after
    ``decoder_input``), not features. Stateless and LSTM predictors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model.predictor, (StatelessPredictor, LSTMPredictor)):
            raise TypeError(f"{type(model.predictor).__name__}: only stateless and LSTM predictors have "
                            "a state torchaudio can batch")
        self.model = model
        self.blank = model.blank

    def transcribe(self, sources: Tensor, source_lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.joiner.enc_proj(sources), source_lengths

    def _to_torchaudio(self, state) -> list[list[Tensor]]:
        if isinstance(self.model.predictor, LSTMPredictor):
            return [[s.transpose(0, 1) for s in state]]  # (layers, N, P) → (N, layers, P)
        return [[state]]

    def _from_torchaudio(self, state: list[list[Tensor]]):
        if isinstance(self.model.predictor, LSTMPredictor):
            return tuple(s.transpose(0, 1).contiguous() for s in state[0])
        return state[0][0]

    def predict(self, targets: Tensor, target_lengths: Tensor,
                state: list[list[Tensor]] | None) -> tuple[Tensor, Tensor, list[list[Tensor]]]:
        pred = self.model.predictor
        st = (pred.initial_state(targets.shape[0], targets.device) if state is None
              else self._from_torchaudio(state))
        outs = []
        for u in range(targets.shape[1]):  # the search feeds one label per hypothesis (U = 1)
            out, st = pred.step(targets[:, u], st)
            outs.append(out)
        return self.model.joiner.pred_proj(torch.stack(outs, 1)), target_lengths, self._to_torchaudio(st)

    def join(self, source_encodings: Tensor, source_lengths: Tensor, target_encodings: Tensor,
             target_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model.joiner.joint(source_encodings[:, :, None], target_encodings[:, None])
        return logits, source_lengths, target_lengths  # (B, T, U, V+1), log_softmax is torchaudio's


def torchaudio_searcher(model: nn.Module, rank: str = "norm", step_max_tokens: int = 100) -> RNNTBeamSearch:
    """``RNNTBeamSearch`` over ``TorchaudioRNNT(model)``; ``rank``: 'norm' (torchaudio's default,
    score / (labels + 2)) or 'score' (raw log-probability, as speechkit ranks)."""
    key = None if rank == "norm" else (lambda h: h[3])
    return RNNTBeamSearch(TorchaudioRNNT(model), model.blank, hypo_sort_key=key,
                          step_max_tokens=step_max_tokens)


@torch.no_grad()
def torchaudio_beam_search(searcher: RNNTBeamSearch, model: nn.Module, enc,
                           beam: int) -> tuple[list[int], float]:
    """One utterance's ``Encoded`` (batch 1) → (best labels, its torchaudio score)."""
    dec = model.decoder_input(enc)
    n = int(dec.lengths[0])
    hyps = searcher(dec.hidden[:, :n], dec.lengths[:1], beam)
    tokens, _, _, sc = hyps[0]
    return list(tokens[1:]), float(sc)  # tokens[0]: the blank the search was seeded with


@torch.no_grad()
def speechkit_beam_search(model: nn.Module, enc, beam: int) -> tuple[list[int], float]:
    h = beam_search(model, enc, beam, 1)[0][0]
    return list(h.tokens), float(h.score)


@torch.no_grad()
def model_logprob(model: nn.Module, enc, ids: list[int]) -> float:
    """log P(labels | utterance) under the transducer, summed over ALL alignments (−RNN-T loss): the
    score both searches approximate, to tell which found the more probable hypothesis."""
    dec = model.decoder_input(enc)
    y = torch.tensor([ids], dtype=torch.long)
    if not ids:  # all blanks: Σ_t log P(blank | ∅, t)
        start = model.predictor(y)[:, :1]  # (1, 1, P)
        logp = model.joiner(dec.hidden[:, : int(dec.lengths[0])], start).log_softmax(-1)
        return float(logp[0, :, model.blank].sum())
    return -float(model.rnnt_loss(dec, y, torch.tensor([len(ids)]))[0])


@torch.no_grad()
def bench(brick: str, manifest: str, max_utts: int | None = None, beam: int = 4, chunk: int | None = None,
          rank: str = "norm", step_max_tokens: int = 100, progress: bool = True) -> dict:
    model, iface = load_brick(brick)
    model.eval()
    if chunk is not None:
        body = model.encoder.body
        if not getattr(body, "causal", False):
            raise SystemExit(f"{brick}: --chunk needs a streaming (causal) conformer encoder")
        body.chunk = chunk
    tok = Tokenizer(Path(brick) / "tokenizer.model")
    utts = load_manifest(manifest, require_audio=True)[:max_utts]
    ds = brick_dataset(brick, iface, utts, None, str(manifest))
    searcher = torchaudio_searcher(model, rank, step_max_tokens)
    runs = {"speechkit": lambda enc: speechkit_beam_search(model, enc, beam),
            "torchaudio": lambda enc: torchaudio_beam_search(searcher, model, enc, beam)}
    rows = []
    for i in range(len(ds)):
        batch = collate([ds[i]])
        enc = model(batch["inputs"], batch["input_lens"])
        row = {"id": utts[i].id, "audio_s": utts[i].duration or batch["input_lens"].item() * 0.01,
               "frames": int(enc.lengths[0]), "ref": ds.refs[i]}
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        for name in order:
            t0 = time.perf_counter()
            ids, sc = runs[name](enc)
            row[f"{name}_s"] = time.perf_counter() - t0
            row[name] = {"ids": ids, "hyp": tok.decode(ids), "score": round(sc, 4)}
        for name in runs:  # outside the timing
            row[name]["logp"] = round(model_logprob(model, enc, row[name]["ids"]), 4)
        rows.append(row)
        if progress:
            print(f"\r  {i + 1}/{len(ds)}", end="", flush=True)
    if progress:
        print()
    refs = [r["ref"] for r in rows]
    summary = {"utts": len(rows), "audio_s": round(sum(r["audio_s"] for r in rows), 2),
               "frames": sum(r["frames"] for r in rows),
               "identical_best": sum(r["speechkit"]["ids"] == r["torchaudio"]["ids"] for r in rows)}
    diff = [r for r in rows if r["speechkit"]["ids"] != r["torchaudio"]["ids"]]
    summary["more_probable_best"] = {  # where the best hypotheses differ: whose has the higher log P(y|x)
        "speechkit": sum(r["speechkit"]["logp"] > r["torchaudio"]["logp"] for r in diff),
        "torchaudio": sum(r["torchaudio"]["logp"] > r["speechkit"]["logp"] for r in diff)}
    for name in runs:
        secs = sum(r[f"{name}_s"] for r in rows)
        sc = score(refs, [r[name]["hyp"] for r in rows])
        summary[name] = {"search_s": round(secs, 4), "ms_per_utt": round(1000 * secs / max(len(rows), 1), 2),
                         "ms_per_frame": round(1000 * secs / max(summary["frames"], 1), 4),
                         "search_rtf": round(secs / max(summary["audio_s"], 1e-9), 5),
                         "wer": round(100 * sc.wer, 2), "cer": round(100 * sc.cer, 2)}
    per_utt = [r["torchaudio_s"] / r["speechkit_s"] for r in rows]
    summary["ratio_total"] = round(summary["torchaudio"]["search_s"] / summary["speechkit"]["search_s"], 3)
    summary["ratio_median_utt"] = round(sorted(per_utt)[len(per_utt) // 2], 3) if per_utt else None
    return {"summary": summary, "utterances": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("brick")
    ap.add_argument("manifest")
    ap.add_argument("--max-utts", type=int)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, help="encoder chunk size in frames (streaming model)")
    ap.add_argument("--ta-rank", choices=("norm", "score"), default="norm",
                    help="torchaudio's hypothesis ranking: its default score / (labels + 2), or raw score")
    ap.add_argument("--step-max-tokens", type=int, default=100, help="torchaudio: most labels per frame")
    ap.add_argument("--json", help="write the summary and per-utterance results here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = bench(args.brick, args.manifest, args.max_utts, args.beam, args.chunk, args.ta_rank,
                args.step_max_tokens, progress=not args.quiet)
    s = res["summary"]
    print(f"{args.brick}  {args.manifest}: {s['utts']} utts, {s['audio_s']} s audio, {s['frames']} encoder "
          f"frames, beam {args.beam}, {args.threads} thread(s), chunk {args.chunk}, torchaudio rank "
          f"{args.ta_rank}")
    print(f"{'search':<12}{'total s':>10}{'ms/utt':>10}{'ms/frame':>10}{'RTF':>10}{'WER %':>8}{'CER %':>8}")
    for name in ("speechkit", "torchaudio"):
        r = s[name]
        print(f"{name:<12}{r['search_s']:>10.3f}{r['ms_per_utt']:>10.1f}{r['ms_per_frame']:>10.3f}"
              f"{r['search_rtf']:>10.4f}{r['wer']:>8.2f}{r['cer']:>8.2f}")
    print(f"torchaudio / speechkit time: {s['ratio_total']:.2f}x total, {s['ratio_median_utt']:.2f}x median "
          f"per utterance; identical best hypotheses: {s['identical_best']}/{s['utts']}")
    if s["identical_best"] < s["utts"]:
        m = s["more_probable_best"]
        print(f"where they differ, the more probable best hypothesis (log P(y|x), all alignments): "
              f"speechkit {m['speechkit']}, torchaudio {m['torchaudio']}")
    if args.json:
        res["config"] = {**{k: v for k, v in vars(args).items() if k != "quiet"},
                         "torch": torch.__version__, "torchaudio": torchaudio.__version__,
                         "machine": platform.machine(), "processor": platform.processor()}
        Path(args.json).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
