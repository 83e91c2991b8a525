"""Transducer bricks as ONNX models in the layout sherpa-onnx's offline recognizer loads.

``export_onnx(brick, out)`` writes

- ``encoder.onnx``: ``x`` (N, T, 80) float32 log-mel features, ``x_lens`` (N,) int64 →
  ``encoder_out`` (N, T', J), ``encoder_out_lens`` (N,) int64: the brick's global CMVN, encoder and the
  joiner's encoder projection (so the runtime's joiner is a sum, a tanh and one matmul);
- ``decoder.onnx``: ``y`` (N, context) int64 → ``decoder_out`` (N, J): the stateless predictor on its last
  ``context`` labels and the joiner's predictor projection; metadata ``vocab_size``, ``context_size``;
- ``joiner.onnx``: ``encoder_out`` (N, J), ``decoder_out`` (N, J) → ``logit`` (N, V+1);
- ``tokens.txt``: ``symbol id`` per line; ``speechkit.json``: what the export holds and its features;
  the brick's ``interface.json`` and ``tokenizer.model``, so ``load_onnx`` reads the folder as a brick.

``load_onnx(folder)`` runs the exported graphs through onnxruntime behind speechkit's own model
interface (``OnnxTransducer``: encoder, predictor steps, joiner), so ``speechkit decode FOLDER
MANIFEST --runtime onnx`` runs the same searches (greedy, beam, the same batching) as the torch
runtime on the same features.

sherpa-onnx's conventions differ from speechkit's in two ways the graphs absorb: its blank is id 0
(speechkit's is V, after the V pieces), so every sherpa id k ≥ 1 is speechkit's piece k − 1, the
joiner's outputs are reordered blank first, and the decoder maps 0 and the start padding −1 to
speechkit's blank/start label; and its features are computed by the runtime from the waveform
(kaldi-native-fbank), so the CMVN statistics travel inside the encoder graph and the runtime's fbank is
set to speechkit's (``FEATURES``: torchaudio's kaldi fbank defaults: frames snipped at the edges, mel
bins up to Nyquist, samples scaled to the int16 range). ``sherpa_recognizer`` builds sherpa-onnx's
recognizer with those settings. Only a predictor with a fixed label context (``StatelessPredictor``)
fits sherpa-onnx's transducer decoder; an LSTM predictor's state does not.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import SpeechkitError
from ..files import atomic_dir
from ..lego.interface import Encoded
from ..lego.transducer import StatelessPredictor
from ..models.transducer import Transducer
from ..tokenizer import Tokenizer
from .bricks import TOKENIZER_FILES, LoadedBrick, load_brick, read_interface

# sherpa-onnx's FeatureExtractorConfig for speechkit's fbank (features.fbank: torchaudio's kaldi.fbank)
FEATURES = {"low_freq": 20.0, "high_freq": 0.0, "snip_edges": True, "normalize_samples": False, "dither": 0.0}
OPSET = 17


class OnnxExportError(SpeechkitError, ValueError):
    """A brick that cannot be exported in the asked layout (the message says why)."""


class _Encoder(nn.Module):
    def __init__(self, model: Transducer):
        super().__init__()
        self.encoder, self.proj = model.encoder, model.joiner.enc_proj

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        enc = self.encoder(x, x_lens)
        return self.proj(enc.hidden), enc.lengths


class _StreamChunk(nn.Module):
    """One streaming step: features (N, n, F) (n a multiple of the front end's stack), the per-layer caches
    stacked (keys, values (layers, N, H, L, Dh), conv inputs (layers, N, D, K−1)) and the encoder frames
    seen so far → (encoder_out (N, n / stack, J), the new caches): ``SpeechEncoder.forward_chunk``'s
    arithmetic on one chunk, the joiner's encoder projection included."""

    def __init__(self, model: Transducer):
        super().__init__()
        self.encoder, self.proj = model.encoder, model.joiner.enc_proj

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, conv: Tensor, offset: Tensor):
        enc = self.encoder
        h, _ = enc.frontend(enc.cmvn(x), x.new_zeros(x.shape[0], dtype=torch.long))
        caches = []
        for i, layer in enumerate(enc.body.layers):
            h, cache = layer.forward_chunk(h, (keys[i], values[i], conv[i]), enc.body.left_context, offset)
            caches.append(cache)
        return (self.proj(h), *(torch.stack(c) for c in zip(*caches)))


def _streams(model: Transducer) -> bool:
    """A FrameStack front end and a causal Conformer body: what ``SpeechEncoder.forward_chunk`` streams."""
    return hasattr(model.encoder.frontend, "forward_chunk") and getattr(model.encoder.body, "causal", False)


class _Decoder(nn.Module):
    def __init__(self, model: Transducer):
        super().__init__()
        self.predictor, self.proj, self.blank = model.predictor, model.joiner.pred_proj, model.blank

    def forward(self, y: Tensor) -> Tensor:
        ids = torch.where(y > 0, y - 1, torch.full_like(y, self.blank))  # sherpa ids → speechkit's
        out, _ = self.predictor.step(ids[:, -1], ids[:, :-1])
        return self.proj(out)


class _Joiner(nn.Module):
    def __init__(self, model: Transducer):
        super().__init__()
        self.joiner, self.blank = model.joiner, model.blank

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        logits = self.joiner.joint(encoder_out, decoder_out)  # (N, V+1), blank last
        return torch.cat([logits[:, self.blank:], logits[:, : self.blank]], 1)  # blank first


def _check(brick: LoadedBrick) -> Transducer:
    model, where = brick.module, brick.path
    if not isinstance(model, Transducer):
        raise OnnxExportError(f"{where}: only transducer bricks export to sherpa-onnx's layout, this one is "
                              f"a {type(model).__name__}")
    if model.ingestor is not None:
        raise OnnxExportError(f"{where}: a LegoNN transducer (joiner on the ingested marginals) has no "
                              "sherpa-onnx layout")
    if not isinstance(model.predictor, StatelessPredictor):
        name = type(model.predictor).__name__
        raise OnnxExportError(f"{where}: sherpa-onnx's transducer decoder reads a fixed label context; this "
                              f"brick's {name} carries a state beyond a fixed number of labels")
    feats = brick.interface.get("input", {})
    frames = (feats.get("frame_length_ms"), feats.get("frame_shift_ms"))
    if feats.get("kind") != "fbank" or frames != (25.0, 10.0):
        raise OnnxExportError(f"{where}: sherpa-onnx computes 25 ms / 10 ms fbank frames; this brick "
                              f"reads {feats}")
    return model


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict, metadata: dict) -> None:
    import onnx

    module.eval()  # the exporter restores the wrapper's mode on the whole model afterwards: keep it eval
    with torch.no_grad(), warnings.catch_warnings():  # tracer notes on shapes: the tests check the graphs
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    graph = onnx.load(str(path))
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=str(value))
    onnx.save(graph, str(path))


def _quantize(folder: Path) -> None:
    """``*.int8.onnx`` beside each model: onnxruntime's dynamic int8 quantisation of the weights (its
    advice to pre-process the graphs and its notes on tensors it leaves in float are not shown)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        for part in ("encoder", "decoder", "joiner"):
            quantize_dynamic(str(folder / f"{part}.onnx"), str(folder / f"{part}.int8.onnx"),
                             weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def export_onnx(brick: str | Path | LoadedBrick, out: str | Path, int8: bool = False) -> dict:
    """Export a transducer brick to ``out`` in sherpa-onnx's offline transducer layout (module docstring);
    ``int8``: also ``*.int8.onnx``, onnxruntime's dynamic int8 quantisation of the weights. Written whole
    or not at all. → {'out', 'files', 'vocab_size', 'context_size'}."""
    b = brick if isinstance(brick, LoadedBrick) else load_brick(brick)
    model = _check(b).eval()
    tok = b.tokenizers["target"]
    v, ctx = model.vocab_size, model.predictor.context
    n_frames = 200
    x = torch.randn(2, n_frames, model.encoder.input_dim)
    x_lens = torch.tensor([n_frames, n_frames * 3 // 4])
    enc_out, _ = _Encoder(model)(x, x_lens)
    dec_out = _Decoder(model)(torch.zeros(2, ctx, dtype=torch.long))
    with atomic_dir(out) as tmp:
        _export(_Encoder(model), (x, x_lens), tmp / "encoder.onnx", ["x", "x_lens"],
                ["encoder_out", "encoder_out_lens"],
                {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "encoder_out": {0: "N", 1: "T_out"},
                 "encoder_out_lens": {0: "N"}},
                {"model_type": "conformer", "model_author": "speechkit",
                 "feature_dim": model.encoder.input_dim})
        _export(_Decoder(model), (torch.zeros(2, ctx, dtype=torch.long),), tmp / "decoder.onnx", ["y"],
                ["decoder_out"], {"y": {0: "N"}, "decoder_out": {0: "N"}},
                {"vocab_size": v + 1, "context_size": ctx})
        _export(_Joiner(model), (enc_out[:, 0], dec_out), tmp / "joiner.onnx", ["encoder_out", "decoder_out"],
                ["logit"], {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
                {"joiner_dim": enc_out.shape[-1]})
        stream = None
        if _streams(model):  # a second encoder graph, chunk by chunk with explicit caches
            body = model.encoder.body
            stream = {"stack": model.encoder.frontend.stack, "chunk": body.chunk or 8,
                      "layers": len(body.layers), "heads": body.heads, "head_dim": body.dim // body.heads,
                      "dim": body.dim, "kernel": body.kernel_size, "left_context": body.left_context}
            n, lay, hd = 3, stream["layers"], (2, body.heads, 3, stream["head_dim"])
            args = (torch.randn(2, 4 * stream["stack"], model.encoder.input_dim), torch.zeros(lay, *hd),
                    torch.zeros(lay, *hd), torch.zeros(lay, 2, body.dim, body.kernel_size - 1),
                    torch.tensor(n))
            cache = {1: "N", 3: "L"}
            _export(_StreamChunk(model), args, tmp / "encoder_chunk.onnx",
                    ["x", "keys", "values", "conv", "offset"],
                    ["encoder_out", "new_keys", "new_values", "new_conv"],
                    {"x": {0: "N", 1: "T"}, "keys": cache, "values": cache, "conv": {1: "N"},
                     "encoder_out": {0: "N", 1: "C"}, "new_keys": {1: "N", 3: "L_out"},
                     "new_values": {1: "N", 3: "L_out"}, "new_conv": {1: "N"}},
                    {"model_author": "speechkit", **{k: str(v) for k, v in stream.items()}})
        pieces = tok.pieces(list(range(v)))
        (tmp / "tokens.txt").write_text("<blk> 0\n" + "".join(f"{p} {i + 1}\n" for i, p in enumerate(pieces)))
        if int8:
            _quantize(tmp)
        shutil.copyfile(tok.path, tmp / TOKENIZER_FILES["target"])
        (tmp / "interface.json").write_text(json.dumps(b.interface, indent=1) + "\n")
        info = {"brick": str(b.path), "layout": "sherpa-onnx offline transducer", "vocab_size": v + 1,
                "context_size": ctx, "blank": 0, "features": {**b.interface["input"], **FEATURES},
                "int8": int8, "stream": stream}
        (tmp / "speechkit.json").write_text(json.dumps(info, indent=1) + "\n")
        files = sorted(p.name for p in tmp.iterdir())
    return {"out": str(out), "files": files, "vocab_size": v + 1, "context_size": ctx}


def sherpa_recognizer(folder: str | Path, num_threads: int = 1, int8: bool = False,
                      decoding_method: str = "greedy_search"):
    """sherpa-onnx's ``OfflineRecognizer`` for an ``export_onnx`` folder, its fbank set to speechkit's
    (``FEATURES``); ``int8``: the ``*.int8.onnx`` models. Its ``speechkit_ids(wave)`` decodes a waveform
    to speechkit's token ids."""
    import sherpa_onnx

    d = Path(folder)
    info = json.loads((d / "speechkit.json").read_text())
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

    def __init__(self, path: Path, stream: dict | None, opts):
        self.info = stream
        if stream is None:
            return
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
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
        import onnxruntime as ort

        d = Path(folder)
        info = json.loads((d / "speechkit.json").read_text())
        if int8 and not info.get("int8"):
            raise OnnxExportError(f"{d}: exported without --int8 (no *.int8.onnx)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        suffix = ".int8.onnx" if int8 else ".onnx"
        self.sessions = {part: ort.InferenceSession(str(d / f"{part}{suffix}"), opts,
                                                    providers=["CPUExecutionProvider"])
                         for part in ("encoder", "decoder", "joiner")}
        self.vocab_size = self.blank = info["vocab_size"] - 1
        self.predictor = _OrtPredictor(self.sessions["decoder"], info["context_size"], self.blank)
        self.joiner = _OrtJoiner(self.sessions["joiner"])
        self.encoder = _OrtStreamingEncoder(d / "encoder_chunk.onnx", info.get("stream"), opts)

    def forward(self, x: Tensor, lengths: Tensor) -> Encoded:
        out, out_lens = self.sessions["encoder"].run(None, {"x": x.contiguous().numpy(),
                                                            "x_lens": lengths.long().numpy()})
        return Encoded(torch.from_numpy(out), torch.from_numpy(out_lens))

    def decoder_input(self, enc: Encoded) -> Encoded:
        return enc


def load_onnx(folder: str | Path, int8: bool = False, threads: int = 1, sessions: bool = True) -> LoadedBrick:
    """An ``export_onnx`` folder as a ``LoadedBrick`` whose module is an ``OnnxTransducer`` (what ``decode
    --runtime onnx`` / ``onnx-int8`` reads); ``sessions=False``: its interface and tokenizer only (an empty
    module, no onnxruntime sessions built)."""
    d = Path(folder)
    if not (d / "speechkit.json").is_file():
        raise OnnxExportError(f"{d}: not a folder written by `speechkit export BRICK --onnx DIR` (no "
                              "speechkit.json)")
    module = OnnxTransducer(d, int8, threads).eval() if sessions else nn.Module()
    return LoadedBrick(d, module, read_interface(d), {"target": Tokenizer(d / TOKENIZER_FILES["target"])})


def sherpa_manifest(folder: str | Path, manifest: str | Path, threads: int = 1, int8: bool = False,
                    max_utts: int | None = None, progress: bool = True) -> tuple[list[dict], object]:
    """Decode a manifest with sherpa-onnx's offline recognizer (greedy search, one label per frame, its own
    fbank set to speechkit's) on an ``export_onnx`` folder → (results {id, ref, hyp}, scores), the
    hypotheses mapped back to speechkit's pieces and detokenised as ``decode`` does."""
    import sys
    import time

    from ..audio import read_audio
    from .decode import brick_manifest, score_results

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


def decode_runtime_to_file(folder: str | Path, manifest: str | Path, runtime: str, opts=None,
                           out: str | Path | None = None, max_utts: int | None = None,
                           threads: int = 1) -> tuple[dict, object]:
    """``speechkit decode FOLDER MANIFEST --runtime RUNTIME`` for an ``export_onnx`` folder: "onnx" runs the
    graphs by onnxruntime behind speechkit's searches (``opts``: ``DecodeOptions``), "sherpa-onnx"
    through sherpa-onnx's recognizer (greedy); "-int8": the ``*.int8.onnx`` graphs. Hypotheses go to
    ``out`` (default beside the folder) → (summary, scores) as ``decode_to_file``."""
    from .decode import DecodeOptions, decode_to_file, default_output, write_results

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    opts, int8 = opts or DecodeOptions(), runtime.endswith("-int8")
    if runtime.startswith("sherpa-onnx"):
        if opts.beam > 1:
            raise OnnxExportError("the sherpa-onnx runtime decodes with sherpa-onnx's greedy search (beam 1)")
        res, sc = sherpa_manifest(folder, manifest, threads, int8, max_utts, opts.progress)
        out = out or default_output(folder, f"{runtime}-decode-{Path(manifest).stem}.jsonl")
        return write_results(res, sc, manifest, out), sc
    torch.set_num_threads(threads)
    return decode_to_file(load_onnx(folder, int8, threads), manifest, opts, out, max_utts=max_utts,
                          target_lang=None)
