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

Attention models (AED / MT / STAST) and language models export for onnxruntime (``export_onnx`` picks the
layout from the brick):

- attention: ``encoder.onnx`` ``x`` (N, T, F) features or (N, T) int64 source ids, ``x_lens`` →
  ``memory_kv`` (N, K, 2·layers·D): the decoder's memory already projected to every layer's
  cross-attention keys and values, ``memory_lens`` (N,), and, for an encoder with a marginal head, the
  CTC interface ``logits`` (N, T', V+1) (blank last) with ``logits_lens``; ``decoder.onnx``: one
  incremental step, ``tokens`` (N,), ``lengths`` (N,) positions fed so far, self-attention ``keys`` and
  ``values`` (layers, N, C, D) with C > every length, ``memory_kv``, ``memory_visible`` (S, K) bool and
  ``rows`` (N,) the memory of each row → ``logits`` (N, V+1), the caches with the new position written;
- language model: ``lm.onnx`` ``tokens`` (N, L) → ``logprobs`` (N, L+1, V+1) after each prefix [start,
  y1, …, yL] (``OnnxLM`` steps it on whole prefixes: any body, LSTM, Transformer or stateless).

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
from ..models.aed import AttentionModel
from ..models.base import TokenLM
from ..models.lm import LanguageModel
from ..models.stast import STAST
from ..models.transducer import Transducer
from ..nn.masks import padding_mask
from ..search.fusion import Fusion
from ..tokenizer import Tokenizer
from .bricks import TOKENIZER_FILES, LoadedBrick, load_brick, read_interface
from .decode import (
    DecodeOptions,
    brick_manifest,
    decode_to_file,
    default_output,
    make_fusion,
    score_results,
    write_results,
)

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


def _int8_coded(module: nn.Module) -> dict[int, tuple[Tensor, Tensor]]:
    """The linear weights a compressed brick stores as 8-bit codes (QAT or one-shot): {hash of the weight
    transposed as the exported MatMul reads it (K, N): (its codes (K, N) int8, per-output scales (N,))}."""
    from ..compress.quant import integer_codes

    out = {}
    for m in module.modules():
        fmt = getattr(m, "compressed", {}).get("weight", {})
        if isinstance(m, nn.Linear) and fmt.get("bits") == 8:
            w = m.weight.detach().float()
            scale = fmt["scale"].float().expand(w.shape[0])
            codes = integer_codes(w, scale[:, None], 8).to(torch.int8)
            out[hash(w.t().contiguous().numpy().tobytes())] = codes.t().contiguous(), scale
    return out


def _quantize(folder: Path, parts: list[str], coded: dict[int, tuple[Tensor, Tensor]]) -> int:
    """``PART.int8.onnx`` beside each ``PART.onnx`` of ``parts``: onnxruntime's dynamic int8 quantisation
    (activations quantised per batch, MatMulInteger). With ``coded`` (``_int8_coded``: a compressed brick)
    exactly the weights stored as 8-bit codes are quantised, per output channel, to those codes and steps
    (found among the graph's initializers by value); otherwise every weight, by onnxruntime's max-abs
    steps. Its advice to pre-process the graphs and its notes on tensors it leaves in float are not
    shown. → the number of weights given their brick's codes."""
    import logging

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, placed = logging.getLogger(), 0
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        for part in parts:
            src, dst = folder / f"{part}.onnx", folder / f"{part}.int8.onnx"
            if not coded:
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
                continue
            graph = onnx.load(str(src)).graph
            found = {}
            for init in graph.initializer:
                if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
                    hit = coded.get(hash(numpy_helper.to_array(init).tobytes()))
                    if hit is not None:
                        found[init.name] = hit
            nodes = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in found]
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_quantize=nodes)
            model = onnx.load(str(dst))
            for init in model.graph.initializer:
                name, _, kind = init.name.rpartition("_")
                if name in found and kind in ("quantized", "scale"):
                    codes, scale = found[name]
                    value = codes.numpy() if kind == "quantized" else scale.numpy()
                    init.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype),
                                                          init.name))
                    placed += kind == "quantized"
            onnx.save(model, str(dst))
    finally:
        root.setLevel(level)
    return placed


def _transducer_graphs(b: LoadedBrick, tmp: Path) -> dict:
    """encoder/decoder/joiner.onnx (+ encoder_chunk.onnx for a streaming brick) and tokens.txt → the
    layout's facts for speechkit.json."""
    model = _check(b)
    v, ctx = model.vocab_size, model.predictor.context
    n_frames = 200
    x = torch.randn(2, n_frames, model.encoder.input_dim)
    x_lens = torch.tensor([n_frames, n_frames * 3 // 4])
    enc_out, _ = _Encoder(model)(x, x_lens)
    dec_out = _Decoder(model)(torch.zeros(2, ctx, dtype=torch.long))
    _export(_Encoder(model), (x, x_lens), tmp / "encoder.onnx", ["x", "x_lens"],
            ["encoder_out", "encoder_out_lens"],
            {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "encoder_out": {0: "N", 1: "T_out"},
             "encoder_out_lens": {0: "N"}},
            {"model_type": "conformer", "model_author": "speechkit", "feature_dim": model.encoder.input_dim})
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
                torch.zeros(lay, *hd), torch.zeros(lay, 2, body.dim, body.kernel_size - 1), torch.tensor(n))
        cache = {1: "N", 3: "L"}
        _export(_StreamChunk(model), args, tmp / "encoder_chunk.onnx",
                ["x", "keys", "values", "conv", "offset"],
                ["encoder_out", "new_keys", "new_values", "new_conv"],
                {"x": {0: "N", 1: "T"}, "keys": cache, "values": cache, "conv": {1: "N"},
                 "encoder_out": {0: "N", 1: "C"}, "new_keys": {1: "N", 3: "L_out"},
                 "new_values": {1: "N", 3: "L_out"}, "new_conv": {1: "N"}},
                {"model_author": "speechkit", **{k: str(v) for k, v in stream.items()}})
    pieces = b.tokenizers["target"].pieces(list(range(v)))
    (tmp / "tokens.txt").write_text("<blk> 0\n" + "".join(f"{p} {i + 1}\n" for i, p in enumerate(pieces)))
    return {"layout": "sherpa-onnx offline transducer", "parts": ["encoder", "decoder", "joiner"],
            "vocab_size": v + 1, "context_size": ctx, "blank": 0,
            "features": {**b.interface["input"], **FEATURES}, "stream": stream}


class _AttentionEncoder(nn.Module):
    """inputs, lengths → the decoder's memory projected to every layer's cross-attention keys and values
    (N, K, 2·layers·D), its lengths, and the CTC interface's logits and lengths when there is a head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, x_lens: Tensor):
        enc = self.model(x, x_lens)
        dec = self.model.decoder
        memory, lengths = dec.memory(enc)
        out = (torch.cat(dec.layers.memory_kv(memory), -1), lengths)
        return out if enc.logits is None else (*out, enc.logits, enc.lengths)


class _AttentionStep(nn.Module):
    """``AttentionDecoder.step`` with its state as explicit tensors (``decoder.onnx``, module docstring):
    every row attends to the cache positions up to its own length; the new position is written in place."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens: Tensor, lengths: Tensor, keys: Tensor, values: Tensor, memory_kv: Tensor,
                memory_visible: Tensor, rows: Tensor):
        dec, d = self.decoder, self.decoder.dim
        x = dec._embed(tokens, lengths)
        visible = torch.arange(keys.shape[2])[None] <= lengths[:, None]  # (N, C)
        mem = memory_kv[rows]  # (N, K, 2·layers·D): each row's memory
        new_k, new_v = [], []
        for i, layer in enumerate(dec.layers):
            k, v = keys[i].clone(), values[i].clone()
            cross = mem[..., 2 * i * d: (2 * i + 1) * d], mem[..., (2 * i + 1) * d: (2 * i + 2) * d]
            x = layer.step(x, (k, v), lengths, visible, (*cross, memory_visible[rows]))
            new_k.append(k)
            new_v.append(v)
        return dec.out(dec.norm(x)), torch.stack(new_k), torch.stack(new_v)


def _attention_graphs(b: LoadedBrick, tmp: Path) -> dict:
    """encoder.onnx and decoder.onnx of an attention model (module docstring) → the layout's facts."""
    model, dec = b.module, b.module.decoder
    if b.text_input:
        x = torch.randint(0, b.source_tokenizer().vocab_size, (2, 12))
        x_lens = torch.tensor([12, 9])
    else:
        x = torch.randn(2, 200, b.interface["input"]["num_mel_bins"])
        x_lens = torch.tensor([200, 150])
    outs = _AttentionEncoder(model)(x, x_lens)
    names = ["memory_kv", "memory_lens", "logits", "logits_lens"][: len(outs)]
    dyn = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "memory_kv": {0: "N", 1: "K"}, "memory_lens": {0: "N"},
           "logits": {0: "N", 1: "T_out"}, "logits_lens": {0: "N"}}
    _export(_AttentionEncoder(model), (x, x_lens), tmp / "encoder.onnx", ["x", "x_lens"], names,
            {k: v for k, v in dyn.items() if k in names or k.startswith("x")}, {"model_author": "speechkit"})
    layers, n, cap = len(dec.layers), 4, 3
    kv = torch.zeros(layers, n, cap, dec.dim)
    args = (torch.full((n,), dec.eos), torch.tensor([0, 1, 2, 0]), kv, kv.clone(), outs[0],
            ~padding_mask(outs[1], outs[0].shape[1]), torch.tensor([0, 0, 1, 1]))
    cache = {1: "N", 2: "C"}
    _export(_AttentionStep(dec), args, tmp / "decoder.onnx",
            ["tokens", "lengths", "keys", "values", "memory_kv", "memory_visible", "rows"],
            ["logits", "new_keys", "new_values"],
            {"tokens": {0: "N"}, "lengths": {0: "N"}, "keys": cache, "values": cache,
             "memory_kv": {0: "S", 1: "K"}, "memory_visible": {0: "S", 1: "K"}, "rows": {0: "N"},
             "logits": {0: "N"}, "new_keys": cache, "new_values": cache}, {"model_author": "speechkit"})
    return {"layout": "onnxruntime attention", "parts": ["encoder", "decoder"], "vocab_size": dec.vocab_size,
            "layers": layers, "dim": dec.dim, "ctc": len(outs) == 4}


def _lm_graphs(b: LoadedBrick, tmp: Path) -> dict:
    """lm.onnx of a language model (module docstring) → the layout's facts."""
    lm = b.module
    _export(_Logprobs(lm), (torch.randint(0, lm.vocab_size, (2, 5)),), tmp / "lm.onnx", ["tokens"],
            ["logprobs"], {"tokens": {0: "N", 1: "L"}, "logprobs": {0: "N", 1: "L1"}},
            {"model_author": "speechkit"})
    return {"layout": "onnxruntime language model", "parts": ["lm"], "vocab_size": lm.vocab_size}


class _Logprobs(nn.Module):
    def __init__(self, lm: LanguageModel):
        super().__init__()
        self.lm = lm

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lm.logprobs(tokens)


def _graphs(b: LoadedBrick):
    """The writer of a brick's layout: transducers in sherpa-onnx's, attention models and LMs for
    onnxruntime; anything else refused with one line."""
    m = b.module
    if isinstance(m, Transducer):
        return _transducer_graphs
    if isinstance(m, AttentionModel | STAST):
        return _attention_graphs
    if isinstance(m, LanguageModel):
        return _lm_graphs
    raise OnnxExportError(f"{b.path}: a {type(m).__name__} brick has no ONNX layout (transducers, attention "
                          "models and language models export)")


def export_onnx(brick: str | Path | LoadedBrick, out: str | Path, int8: bool = False) -> dict:
    """Export a brick to ``out``: a transducer in sherpa-onnx's offline transducer layout, an attention model
    or a language model for onnxruntime (module docstring); ``int8``: also ``*.int8.onnx``, onnxruntime's
    dynamic int8 quantisation of the weights. Written whole or not at all. → {'out', 'files', 'layout',
    'vocab_size'[, 'context_size']}."""
    b = brick if isinstance(brick, LoadedBrick) else load_brick(brick)
    write = _graphs(b)
    b.module.eval()
    with atomic_dir(out) as tmp:
        info = write(b, tmp)
        if int8:
            info["int8_codes"] = _quantize(tmp, info["parts"], _int8_coded(b.module))
        for role, tok in b.tokenizers.items():
            shutil.copyfile(tok.path, tmp / TOKENIZER_FILES[role])
        (tmp / "interface.json").write_text(json.dumps(b.interface, indent=1) + "\n")
        info = {"brick": str(b.path), "model": type(b.module).__name__, **info, "int8": int8}
        (tmp / "speechkit.json").write_text(json.dumps(info, indent=1) + "\n")
        files = sorted(p.name for p in tmp.iterdir())
    return {"out": str(out), "files": files, **{k: info[k] for k in ("layout", "vocab_size", "context_size")
                                               if k in info}}


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
