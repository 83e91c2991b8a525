"""Bricks as ONNX models: transducers in the layout sherpa-onnx's offline recognizer loads, attention models
(AED / MT / STAST) and language models for onnxruntime (``export_onnx`` picks the layout from the brick).
The runtimes that read them: ``pipelines.onnx``.

Transducer: ``export_onnx(brick, out)`` writes

- ``encoder.onnx``: ``x`` (N, T, 80) float32 log-mel features, ``x_lens`` (N,) int64 →
  ``encoder_out`` (N, T', J), ``encoder_out_lens`` (N,) int64: the brick's global CMVN, encoder and the
  joiner's encoder projection (so the runtime's joiner is a sum, a tanh and one matmul);
- ``decoder.onnx``: ``y`` (N, context) int64 → ``decoder_out`` (N, J): the stateless predictor on its last
  ``context`` labels and the joiner's predictor projection; metadata ``vocab_size``, ``context_size``;
- ``joiner.onnx``: ``encoder_out`` (N, J), ``decoder_out`` (N, J) → ``logit`` (N, V+1);
- ``tokens.txt``: ``symbol id`` per line; ``speechkit.json``: what the export holds and its features;
  the brick's ``interface.json`` and tokenizers, so ``load_onnx`` reads the folder as a brick;
- for a streaming brick also ``encoder_chunk.onnx`` (one chunk, explicit caches: ``_StreamChunk``).

sherpa-onnx's conventions differ from speechkit's in two ways the graphs absorb: its blank is id 0
(speechkit's is V, after the V pieces), so every sherpa id k ≥ 1 is speechkit's piece k − 1, the
joiner's outputs are reordered blank first, and the decoder maps 0 and the start padding −1 to
speechkit's blank/start label; and its features are computed by the runtime from the waveform
(kaldi-native-fbank), so the CMVN statistics travel inside the encoder graph and the runtime's fbank is
set to speechkit's (``FEATURES``: torchaudio's kaldi fbank defaults: frames snipped at the edges, mel
bins up to Nyquist, samples scaled to the int16 range). Only a predictor with a fixed label context
(``StatelessPredictor``) fits sherpa-onnx's transducer decoder; an LSTM predictor's state does not.

Attention models and language models:

- attention: ``encoder.onnx`` ``x`` (N, T, F) features or (N, T) int64 source ids, ``x_lens`` →
  ``memory_kv`` (N, K, 2·layers·D): the decoder's memory already projected to every layer's
  cross-attention keys and values, ``memory_lens`` (N,), and, for an encoder with a marginal head, the
  CTC interface ``logits`` (N, T', V+1) (blank last) with ``logits_lens``; ``decoder.onnx``: one
  incremental step, ``tokens`` (N,), ``lengths`` (N,) positions fed so far, self-attention ``keys`` and
  ``values`` (layers, N, C, D) with C > every length, ``memory_kv``, ``memory_visible`` (S, K) bool and
  ``rows`` (N,) the memory of each row → ``logits`` (N, V+1), the caches with the new position written;
- language model: ``lm.onnx`` ``tokens`` (N, L) → ``logprobs`` (N, L+1, V+1) after each prefix [start,
  y1, …, yL].

``--int8``: ``*.int8.onnx`` beside each, onnxruntime's dynamic quantisation; a compressed brick's 8-bit
weights keep their own codes and steps (``_quantize``).
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
from ..lego.transducer import StatelessPredictor
from ..models.aed import AttentionModel
from ..models.lm import LanguageModel
from ..models.stast import STAST
from ..models.transducer import Transducer
from ..nn.masks import padding_mask
from .bricks import TOKENIZER_FILES, LoadedBrick, load_brick

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
