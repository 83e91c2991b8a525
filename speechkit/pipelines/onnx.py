"""The runtimes of ``onnx_export``'s folders: onnxruntime behind speechkit's searches, and sherpa-onnx.

``load_onnx(folder)`` runs the exported graphs through onnxruntime behind speechkit's own model
interfaces (``OnnxTransducer``: encoder, predictor steps, joiner; ``OnnxAttentionModel``: encoder and
one decoder step; ``OnnxLM``: a ``TokenLM`` stepped on whole prefixes, any body), so ``speechkit decode
FOLDER MANIFEST --runtime onnx`` runs the same searches (greedy, beam, the same batching) as the torch
runtime on the same features, fused with an LM export if asked (``runtime_fusion``).
``sherpa_recognizer`` builds sherpa-onnx's offline recognizer on a transducer export, its fbank set to
speechkit's (``onnx_export.FEATURES``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..lego.interface import Encoded
from ..models.base import TokenLM
from ..nn.masks import padding_mask
from ..search.fusion import Fusion
from ..tokenizer import Tokenizer
from .bricks import TOKENIZER_FILES, LoadedBrick, read_interface
from .decode import (
    DecodeOptions,
    brick_manifest,
    decode_to_file,
    default_output,
    make_fusion,
    score_results,
    write_results,
)
from .onnx_export import FEATURES, OnnxExportError


def sherpa_recognizer(folder: str | Path, num_threads: int = 1, int8: bool = False,
                      decoding_method: str = "greedy_search"):
    """sherpa-onnx's ``OfflineRecognizer`` for an ``export_onnx`` folder, its fbank set to speechkit's
    (``FEATURES``); ``int8``: the ``*.int8.onnx`` models. Its ``speechkit_ids(wave)`` decodes a waveform
    to speechkit's token ids."""
    import sherpa_onnx

    d = Path(folder)
    info = read_export(d, int8)
    if info.get("model", "Transducer") != "Transducer":
        raise OnnxExportError(f"{d}: sherpa-onnx runs transducer exports; this one is a {info['model']} "
                              "(--runtime onnx runs it)")
    suffix = ".int8.onnx" if int8 else ".onnx"
    rec = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(d / f"encoder{suffix}"), decoder=str(d / f"decoder{suffix}"),
        joiner=str(d / f"joiner{suffix}"), tokens=str(d / "tokens.txt"), num_threads=num_threads,
        decoding_method=decoding_method)
    feats = info["features"]
    rec.config.feat_config = sherpa_onnx.FeatureExtractorConfig(
        sampling_rate=feats["sample_rate"], feature_dim=feats["num_mel_bins"],
        **{k: feats[k] for k in FEATURES})
    rec.recognizer = type(rec.recognizer)(rec.config)  # rebuilt with the features above
    pieces = {line.rsplit(" ", 1)[0].replace("▁", " "): int(line.rsplit(" ", 1)[1]) - 1
              for line in (d / "tokens.txt").read_text().splitlines()[1:]}

    def speechkit_ids(wave: Tensor) -> list[int]:
        """A waveform (N,) at the brick's rate → the hypothesis as speechkit's token ids."""
        stream = rec.create_stream()
        stream.accept_waveform(feats["sample_rate"], wave.numpy())
        rec.decode_stream(stream)
        return [pieces[t] for t in stream.result.tokens]  # sherpa's symbols (▁ as a space) → ids

    rec.speechkit_ids = speechkit_ids
    return rec


class _OrtPredictor:
    """speechkit's predictor interface (``initial_state``, ``step``, ``select``, ``where``) on decoder.onnx:
    the state is the last ``context − 1`` labels (speechkit ids, the blank V at the start)."""

    def __init__(self, session, context: int, blank: int):
        self.session, self.context, self.blank = session, context, blank

    def initial_state(self, n: int, device=None) -> Tensor:
        return torch.full((n, self.context - 1), self.blank, dtype=torch.long)

    def step(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        ctx = torch.cat([state, tokens[:, None]], 1)  # (N, context)
        y = torch.where(ctx == self.blank, 0, ctx + 1)  # speechkit ids → sherpa's (blank 0)
        (out,) = self.session.run(None, {"y": y.numpy()})
        return torch.from_numpy(out), ctx[:, 1:]

    def select(self, state: Tensor, index: Tensor) -> Tensor:
        return state[index]

    def where(self, mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
        return torch.where(mask[:, None], new, old)


class _OrtJoiner:
    """speechkit's joiner interface on joiner.onnx: the projections are inside the exported encoder and
    decoder (identities here); ``joint`` broadcasts its inputs (…, J) and puts the blank back last."""

    def __init__(self, session):
        self.session = session

    def enc_proj(self, x: Tensor) -> Tensor:
        return x

    pred_proj = enc_proj

    def joint(self, enc_proj: Tensor, pred_proj: Tensor) -> Tensor:
        e, p = torch.broadcast_tensors(enc_proj, pred_proj)
        (logit,) = self.session.run(None, {"encoder_out": e.reshape(-1, e.shape[-1]).contiguous().numpy(),
                                           "decoder_out": p.reshape(-1, p.shape[-1]).contiguous().numpy()})
        logit = torch.from_numpy(logit)
        return torch.cat([logit[:, 1:], logit[:, :1]], 1).view(*e.shape[:-1], -1)


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _OrtStreamingEncoder:
    """``SpeechEncoder``'s streaming interface (``stream_state``, ``forward_chunk``; ``frontend.stack``,
    ``body.chunk``/``causal`` for ``set_chunk``) on encoder_chunk.onnx: features are buffered until a
    whole chunk (``body.chunk`` encoder frames × ``stack``) is there, and each chunk runs the graph with
    the caches of the stream; ``final`` runs the last partial chunk."""

    def __init__(self, path: Path, stream: dict | None, threads: int):
        self.info = stream
        if stream is None:
            return
        self.session = _sessions(path.parent, [path.stem], False, threads)[path.stem]
        self.frontend = _Namespace(stack=stream["stack"])
        self.body = _Namespace(causal=True, chunk=stream["chunk"])

    def stream_state(self, batch: int = 1, device=None) -> dict:
        if self.info is None:
            raise ValueError("this export has no streaming encoder (the brick's encoder does not stream: it "
                             "needs a FrameStack front end and a causal Conformer)")
        s = self.info
        kv = torch.zeros(s["layers"], batch, s["heads"], 0, s["head_dim"])
        return {"features": None, "keys": kv, "values": kv, "offset": 0,
                "conv": torch.zeros(s["layers"], batch, s["dim"], s["kernel"] - 1)}

    def forward_chunk(self, feats: Tensor, state: dict, final: bool = False) -> tuple[Encoded, dict]:
        buf = feats if state["features"] is None else torch.cat([state["features"], feats], 1)
        stack, step = self.frontend.stack, self.body.chunk * self.frontend.stack
        state, outs = dict(state), []
        while buf.shape[1] >= step or (final and buf.shape[1] >= stack):
            n = step if buf.shape[1] >= step else buf.shape[1] // stack * stack
            out, *caches = self.session.run(None, {
                "x": buf[:, :n].contiguous().numpy(), "keys": state["keys"].numpy(),
                "values": state["values"].numpy(), "conv": state["conv"].numpy(),
                "offset": torch.tensor(state["offset"]).numpy()})
            state.update(zip(("keys", "values", "conv"), (torch.from_numpy(c) for c in caches)))
            state["offset"] += out.shape[1]
            outs.append(torch.from_numpy(out))
            buf = buf[:, n:]
        state["features"] = buf[:, :0] if final else buf
        h = torch.cat(outs, 1) if outs else feats.new_zeros(feats.shape[0], 0, 1)
        return Encoded(h, torch.full((h.shape[0],), h.shape[1], dtype=torch.long)), state


class OnnxTransducer(nn.Module):
    """An ``export_onnx`` folder run by onnxruntime behind the ``Transducer`` interface the searches use:
    ``forward(x (B, T, F), lengths) → Encoded`` (hidden = the joiner-projected encoder output),
    ``predictor``, ``joiner``, ``blank``, ``vocab_size``. CPU tensors; no gradients."""

    def __init__(self, folder: str | Path, int8: bool = False, threads: int = 1):
        super().__init__()
        d = Path(folder)
        info = read_export(d, int8)
        self.sessions = _sessions(d, ["encoder", "decoder", "joiner"], int8, threads)
        self.vocab_size = self.blank = info["vocab_size"] - 1
        self.predictor = _OrtPredictor(self.sessions["decoder"], info["context_size"], self.blank)
        self.joiner = _OrtJoiner(self.sessions["joiner"])
        self.encoder = _OrtStreamingEncoder(d / "encoder_chunk.onnx", info.get("stream"), threads)

    def forward(self, x: Tensor, lengths: Tensor) -> Encoded:
        out, out_lens = self.sessions["encoder"].run(None, {"x": x.contiguous().numpy(),
                                                            "x_lens": lengths.long().numpy()})
        return Encoded(torch.from_numpy(out), torch.from_numpy(out_lens))

    def decoder_input(self, enc: Encoded) -> Encoded:
        return enc


class _OrtAttentionDecoder:
    """``AttentionDecoder``'s search interface (``eos``, ``memory``, ``initial_state``, ``step``, ``select``,
    ``where``) on decoder.onnx. The state: per row its length, the self-attention caches (layers, N, C, D)
    grown 8 positions at a time, and the memory it reads (``rows`` into the encoder's ``memory_kv``)."""

    def __init__(self, session, vocab_size: int, layers: int, dim: int):
        self.session, self.vocab_size, self.layers, self.dim = session, vocab_size, layers, dim
        self.eos = vocab_size

    def memory(self, enc: Encoded) -> tuple[Tensor, Tensor]:
        return enc.hidden, enc.lengths  # OnnxAttentionModel's hidden: the projected memory

    def initial_state(self, n: int, device=None, memory: Tensor | None = None,
                      memory_lengths: Tensor | None = None) -> dict:
        if memory is None:
            raise OnnxExportError("an exported attention decoder steps with its encoder's memory only (its "
                                  "internal LM is not exported)")
        s = memory.shape[0]
        if s and n % s:
            raise ValueError(f"{n} sequences cannot share {s} memories in equal beams")
        kv = torch.zeros(self.layers, n, 0, self.dim)
        return {"lengths": torch.zeros(n, dtype=torch.long), "keys": kv, "values": kv,
                "rows": torch.arange(s).repeat_interleave(n // max(s, 1)), "memory_kv": memory,
                "memory_visible": ~padding_mask(memory_lengths, memory.shape[1])}

    def step(self, tokens: Tensor, state: dict) -> tuple[Tensor, dict]:
        keys, values, lengths = state["keys"], state["values"], state["lengths"]
        need = int(lengths.max()) + 1 if lengths.numel() else 1
        if keys.shape[2] < need:  # grow the capacity by a chunk
            pad = keys.new_zeros(*keys.shape[:2], need + 7 - keys.shape[2], keys.shape[3])
            keys, values = torch.cat([keys, pad], 2), torch.cat([values, pad], 2)
        logits, keys, values = self.session.run(None, {
            "tokens": tokens.numpy(), "lengths": lengths.numpy(), "keys": keys.numpy(),
            "values": values.numpy(), "memory_kv": state["memory_kv"].numpy(),
            "memory_visible": state["memory_visible"].numpy(), "rows": state["rows"].numpy()})
        return torch.from_numpy(logits), {**state, "lengths": lengths + 1, "keys": torch.from_numpy(keys),
                                          "values": torch.from_numpy(values)}

    def select(self, state: dict, index: Tensor) -> dict:
        return {**state, "lengths": state["lengths"][index], "rows": state["rows"][index],
                "keys": state["keys"][:, index], "values": state["values"][:, index]}

    def where(self, mask: Tensor, new: dict, old: dict) -> dict:
        return {**new, "lengths": torch.where(mask, new["lengths"], old["lengths"])}


class OnnxAttentionModel(nn.Module):
    """An attention model's export run by onnxruntime behind the interface ``attention_beam_search`` uses:
    ``forward(x, lengths) → Encoded`` (hidden = the projected memory ``memory_kv``, logits = the CTC
    interface's when exported) and ``decoder`` (``_OrtAttentionDecoder``). CPU tensors; no gradients."""

    def __init__(self, sessions: dict, info: dict):
        super().__init__()
        self.sessions, v = sessions, info["vocab_size"]
        self.vocab_size = self.blank = v
        self.decoder = _OrtAttentionDecoder(sessions["decoder"], v, info["layers"], info["dim"])

    def forward(self, x: Tensor, lengths: Tensor) -> Encoded:
        memory, lengths, *ctc = (torch.from_numpy(o) for o in self.sessions["encoder"].run(
            None, {"x": x.contiguous().numpy(), "x_lens": lengths.long().numpy()}))
        return Encoded(memory, lengths, ctc[0] if ctc and torch.equal(ctc[1], lengths) else None)


class OnnxLM(nn.Module, TokenLM):
    """A language model's lm.onnx as a ``TokenLM`` (fusion, rescoring). ``logprobs`` runs the graph once;
    ``step`` runs it on each history's whole prefix (the state: the ids fed, start first, and their
    counts), so any body exports, at a cost growing with the prefix."""

    def __init__(self, session, vocab_size: int):
        super().__init__()
        self.session, self.vocab_size = session, vocab_size

    def logprobs(self, targets: Tensor) -> Tensor:
        (out,) = self.session.run(None, {"tokens": targets.long().contiguous().numpy()})
        return torch.from_numpy(out)

    def initial_state(self, n: int, device=None) -> tuple[Tensor, Tensor]:
        return torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long)

    def step(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        fed, count = state
        width = int(count.max()) + 1 if count.numel() else 1
        rows = torch.arange(fed.shape[0])
        fed = torch.cat([fed, fed.new_zeros(fed.shape[0], max(width - fed.shape[1], 0))], 1)
        fed = fed.index_put((rows, count), tokens)  # positions past a row's count are scratch
        logp = self.logprobs(fed[:, 1:width])  # (N, width, V+1): the start is lm.onnx's own
        return logp[rows, count], (fed, count + 1)

    def select(self, state, index: Tensor):
        return state[0][index], state[1][index]

    def where(self, mask: Tensor, new, old):
        return new[0], torch.where(mask, new[1], old[1])


def _sessions(d: Path, parts: list[str], int8: bool, threads: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    suffix = ".int8.onnx" if int8 else ".onnx"
    return {part: ort.InferenceSession(str(d / f"{part}{suffix}"), opts, providers=["CPUExecutionProvider"])
            for part in parts}


def read_export(folder: str | Path, int8: bool = False) -> dict:
    """An ``export_onnx`` folder's speechkit.json (a folder without one, or ``int8`` of an export without
    ``*.int8.onnx``, refused with one line)."""
    d = Path(folder)
    if not (d / "speechkit.json").is_file():
        raise OnnxExportError(f"{d}: not a folder written by `speechkit export BRICK --onnx DIR` (no "
                              "speechkit.json)")
    info = json.loads((d / "speechkit.json").read_text())
    if int8 and not info.get("int8"):
        raise OnnxExportError(f"{d}: exported without --int8 (no *.int8.onnx)")
    return info


def load_onnx(folder: str | Path, int8: bool = False, threads: int = 1, sessions: bool = True) -> LoadedBrick:
    """An ``export_onnx`` folder as a ``LoadedBrick`` whose module runs its graphs by onnxruntime (what
    ``decode --runtime onnx`` / ``onnx-int8`` reads): ``OnnxTransducer``, ``OnnxAttentionModel`` or
    ``OnnxLM``; ``sessions=False``: its interface and tokenizers only (an empty module, no sessions)."""
    d = Path(folder)
    info = read_export(d, int8)
    module = nn.Module()
    if sessions:
        model = info.get("model", "Transducer")
        if model == "Transducer":
            module = OnnxTransducer(d, int8, threads)
        elif model == "LanguageModel":
            module = OnnxLM(_sessions(d, ["lm"], int8, threads)["lm"], info["vocab_size"])
        else:
            module = OnnxAttentionModel(_sessions(d, info["parts"], int8, threads), info)
    toks = {role: Tokenizer(d / f) for role, f in TOKENIZER_FILES.items() if (d / f).is_file()}
    return LoadedBrick(d, module.eval(), read_interface(d), toks)


def sherpa_manifest(folder: str | Path, manifest: str | Path, threads: int = 1, int8: bool = False,
                    max_utts: int | None = None, progress: bool = True) -> tuple[list[dict], object]:
    """Decode a manifest with sherpa-onnx's offline recognizer (greedy search, one label per frame, its own
    fbank set to speechkit's) on an ``export_onnx`` folder → (results {id, ref, hyp}, scores), the
    hypotheses mapped back to speechkit's pieces and detokenised as ``decode`` does."""
    import sys
    import time

    from ..audio import read_audio

    brick = load_onnx(folder, sessions=False)  # the tokenizer and references, as the other runtimes read them
    ds = brick_manifest(brick, manifest, max_utts, target_lang=None)
    rec = sherpa_recognizer(folder, threads, int8)
    results, t0 = [], time.time()
    for n, (u, ref, written) in enumerate(zip(ds.utts, ds.refs, ds.written_refs), 1):
        ids = rec.speechkit_ids(read_audio(u.audio, u.offset, u.duration))
        results.append({"id": u.id, "ref": ref, "hyp": ds.tok.decode(ids), "written_ref": written})
        if progress and (n % 100 == 0 or n == len(ds.utts)):
            print(f"\r  decoded {n}/{len(ds.utts)} ({time.time() - t0:.0f}s)", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return results, score_results(results, manifest)


RUNTIMES = ("onnx", "onnx-int8", "sherpa-onnx", "sherpa-onnx-int8")


def runtime_fusion(folder: str | Path, lm: str | Path | None, lm_weight: float = 0.0,
                   length_reward: float = 0.0, lm_eos: bool = True) -> Fusion | None:
    """The ``Fusion`` of ``decode FOLDER --runtime onnx``: an external LM, a torch LM brick or an LM's export
    (run by onnxruntime), checked to speak the export's vocabulary (the internal LM is not exported)."""
    if lm is None or not (Path(lm) / "speechkit.json").is_file():
        return make_fusion(folder, lm, lm_weight, 0.0, length_reward, lm_eos)
    b = load_onnx(lm)
    if not isinstance(b.module, OnnxLM):
        raise OnnxExportError(f"{lm}: the export of a {read_export(lm)['model']}, not of a language model")
    b.check_speaks(read_interface(folder), folder)
    return Fusion(b.module, lm_weight, 0.0, length_reward, lm_eos)


def decode_runtime_to_file(folder: str | Path, manifest: str | Path, runtime: str, opts=None,
                           out: str | Path | None = None, max_utts: int | None = None,
                           threads: int = 1) -> tuple[dict, object]:
    """``speechkit decode FOLDER MANIFEST --runtime RUNTIME`` for an ``export_onnx`` folder: "onnx" runs the
    graphs by onnxruntime behind speechkit's searches (``opts``: ``DecodeOptions``), "sherpa-onnx"
    through sherpa-onnx's recognizer (greedy); "-int8": the ``*.int8.onnx`` graphs. Hypotheses go to
    ``out`` (default beside the folder) → (summary, scores) as ``decode_to_file``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    opts, int8 = opts or DecodeOptions(), runtime.endswith("-int8")
    if runtime.startswith("sherpa-onnx"):
        if opts.beam > 1:
            raise OnnxExportError("the sherpa-onnx runtime decodes with sherpa-onnx's greedy search (beam 1)")
        res, sc = sherpa_manifest(folder, manifest, threads, int8, max_utts, opts.progress)
        out = out or default_output(folder, f"{runtime}-decode-{Path(manifest).stem}.jsonl")
        return write_results(res, sc, manifest, out), sc
    if read_export(folder, int8).get("model") == "LanguageModel":
        raise OnnxExportError(f"{folder}: a language model's export is not decoded on its own (it fuses: "
                              "--lm)")
    torch.set_num_threads(threads)
    return decode_to_file(load_onnx(folder, int8, threads), manifest, opts, out, max_utts=max_utts)
