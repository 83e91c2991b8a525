"""Transducer bricks as ONNX models in the layout sherpa-onnx's offline recognizer loads.

``export_onnx(brick, out)`` writes

- ``encoder.onnx``: ``x`` (N, T, 80) float32 log-mel features, ``x_lens`` (N,) int64 →
  ``encoder_out`` (N, T', J), ``encoder_out_lens`` (N,) int64: the brick's global CMVN, encoder and the
  joiner's encoder projection (so the runtime's joiner is a sum, a tanh and one matmul);
- ``decoder.onnx``: ``y`` (N, context) int64 → ``decoder_out`` (N, J): the stateless predictor on its last
  ``context`` labels and the joiner's predictor projection; metadata ``vocab_size``, ``context_size``;
- ``joiner.onnx``: ``encoder_out`` (N, J), ``decoder_out`` (N, J) → ``logit`` (N, V+1);
- ``tokens.txt``: ``symbol id`` per line; ``speechkit.json``: what the export holds and its features.

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
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import SpeechkitError
from ..files import atomic_dir
from ..lego.transducer import StatelessPredictor
from ..models.transducer import Transducer
from .bricks import LoadedBrick, load_brick

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
    with torch.no_grad():
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
        pieces = tok.pieces(list(range(v)))
        (tmp / "tokens.txt").write_text("<blk> 0\n" + "".join(f"{p} {i + 1}\n" for i, p in enumerate(pieces)))
        if int8:
            _quantize(tmp)
        info = {"brick": str(b.path), "layout": "sherpa-onnx offline transducer", "vocab_size": v + 1,
                "context_size": ctx, "blank": 0, "features": {**b.interface["input"], **FEATURES},
                "int8": int8}
        (tmp / "speechkit.json").write_text(json.dumps(info, indent=1) + "\n")
        files = sorted(p.name for p in tmp.iterdir())
    return {"out": str(out), "files": files, "vocab_size": v + 1, "context_size": ctx}


def sherpa_recognizer(folder: str | Path, num_threads: int = 1, int8: bool = False,
                      decoding_method: str = "greedy_search"):
    """sherpa-onnx's ``OfflineRecognizer`` for an ``export_onnx`` folder, its fbank set to speechkit's
    (``FEATURES``); ``int8``: the ``*.int8.onnx`` models."""
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
    return rec
