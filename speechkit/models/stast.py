"""STAST speech translation (METHODS.md §2): acoustic encoder → CTC shrink → semantic encoder and
decoder shared with MT, trained multi-task in one latent space.

Speech path:  fbank → ``encoder`` (acoustic, CTC head over the source-transcript vocabulary)
              → ``Shrink`` (one vector per CTC segment) → ``adapter`` → + positions
              → ``text_encoder.body`` (semantic encoder) → ``decoder``.
Text path:    transcript ids → ``text_encoder`` (its ``TokenEmbedding`` + the same body) → ``decoder``.

``loss = st·CE(speech path) + mt·CE(text path) + ctc·CTC(acoustic head, transcript)
+ adapt·D(speech semantics, text semantics)``. The text path *is* the MT model: the same
modules, so ``STAST.mt_model()`` is an ``AttentionModel`` sharing every parameter.

Baselines and ablations are the same class with parts switched off: ``shrink=None`` (the
semantic encoder reads every acoustic frame), ``mt_weight=0`` (no shared MT task),
``adapt_weight=0`` (no adaptation loss); the plain end-to-end ST model of equal size is
``shrink=None, mt_weight=0, adapt_weight=0``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lego.decoders import AttentionDecoder
from ..lego.encoders import SequenceEncoder, SpeechEncoder
from ..lego.interface import Encoded, Shrink, ctc_loss
from ..nn.masks import padding_mask
from ..nn.transformer import sinusoids
from .aed import AttentionModel, DecoderILM
from .base import EncoderDecoderModel, term_scales

DISTANCES = ("mse_mean", "token_mse", "contrastive")


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """(B, T, D), lengths (B,) → mean over the valid positions (B, D)."""
    keep = (~padding_mask(lengths, x.shape[1]))[..., None].to(x.dtype)
    return (x * keep).sum(1) / lengths.clamp(min=1)[:, None].to(x.dtype)


def resample(x: Tensor, lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """Linearly resample each row's valid part (B, T, D) to ``target_lengths`` (B,) → (B, U, D),
    zero-padded; the ends map onto the ends (``F.interpolate(..., align_corners=True)`` per row,
    batched). A row already of its target length is returned as it is."""
    u = int(target_lengths.max())
    last = (lengths - 1).clamp(min=0)[:, None]  # (B, 1)
    step = last.to(x.dtype) / (target_lengths[:, None] - 1).clamp(min=1).to(x.dtype)
    pos = torch.arange(u, device=x.device, dtype=x.dtype) * step  # (B, U) source positions
    lo = torch.minimum(pos.floor().long(), last)
    w = (pos - lo.to(x.dtype))[..., None]
    at = lambda i: x.gather(1, i[..., None].expand(-1, -1, x.shape[2]))  # noqa: E731
    out = at(lo) * (1 - w) + at(torch.minimum(lo + 1, last)) * w
    return out.masked_fill(padding_mask(target_lengths, u)[..., None], 0.0)


def adaptation_distance(kind: str, speech: Tensor, speech_lens: Tensor, text: Tensor, text_lens: Tensor,
                        temperature: float = 0.1) -> Tensor:
    """Cross-modal distance per utterance (B,), on the scale of a per-token sum like the CE terms.

    speech (B, S, D), text (B, U, D) semantic-encoder outputs of the same utterances.
    - ``mse_mean``: U · mean-squared difference of the mean-pooled vectors;
    - ``token_mse``: Σ_u mean-squared difference per position, the speech side linearly
      resampled to the U text positions (the shrink makes S ≈ U, often S = U);
    - ``contrastive``: U · InfoNCE of each mean-pooled speech vector against all text vectors
      of the batch (cosine similarity / ``temperature``), the own text being the positive.
    """
    u = text_lens.to(speech.dtype)
    if kind == "mse_mean":
        return u * (masked_mean(speech, speech_lens) - masked_mean(text, text_lens)).pow(2).mean(-1)
    if kind == "token_mse":
        d = (resample(speech, speech_lens, text_lens) - text).pow(2).mean(-1)  # (B, U)
        return d.masked_fill(padding_mask(text_lens, text.shape[1]), 0.0).sum(1)
    if kind == "contrastive":
        s = F.normalize(masked_mean(speech, speech_lens), dim=-1)
        t = F.normalize(masked_mean(text, text_lens), dim=-1)
        logits = s @ t.T / temperature  # (B, B)
        return u * F.cross_entropy(logits, torch.arange(len(s), device=s.device), reduction="none")
    raise ValueError(f"adapt_distance must be one of {DISTANCES}, got {kind!r}")


class STAST(EncoderDecoderModel):
    """Speech translation sharing its semantic encoder and decoder with MT.

    Args:
        encoder: the acoustic ``SpeechEncoder``; its marginal head is CTC over the source
            transcript vocabulary (needed by the shrink and the CTC term).
        text_encoder: the MT text encoder, a ``SequenceEncoder`` with a ``TokenEmbedding``
            front end over the same transcript vocabulary and a ``body``: the semantic encoder.
        decoder: the MT/ST attention decoder over the target vocabulary, reading hidden states
            (``ingestor=None``).
        acoustic_dim: width of the acoustic encoder's hidden states (the adapter maps it to
            the text encoder's width with LayerNorm + Linear).
        shrink: a ``Shrink``, or None to feed every acoustic frame to the semantic encoder.
        st_weight, mt_weight, ctc_weight, adapt_weight: loss weights (0 switches a term off).
        adapt_distance: ``token_mse`` (the default: best of the three in recipes/locale/RESULTS.md)
            | ``mse_mean`` | ``contrastive`` (see ``adaptation_distance``).
        adapt_stop_gradient: the text side is a fixed teacher of the adaptation loss.
        label_smoothing: of both cross-entropies.
    """

    source_side_args = ("encoder", "text_encoder")  # over the transcripts (train/cli.set_vocab_sizes)

    def __init__(self, encoder: SpeechEncoder, text_encoder: SequenceEncoder, decoder: AttentionDecoder,
                 acoustic_dim: int, shrink: Shrink | None = None, st_weight: float = 1.0,
                 mt_weight: float = 1.0, ctc_weight: float = 1.0, adapt_weight: float = 1.0,
                 adapt_distance: str = "token_mse", adapt_stop_gradient: bool = True,
                 contrastive_temperature: float = 0.1, label_smoothing: float = 0.1):
        super().__init__()
        if adapt_distance not in DISTANCES:
            raise ValueError(f"adapt_distance must be one of {DISTANCES}, got {adapt_distance!r}")
        if decoder.ingestor is not None:
            raise ValueError("STAST's decoder reads the semantic encoder's hidden states: use ingestor=None")
        head_vocab = encoder.vocab_size
        if (shrink is not None or ctc_weight) and head_vocab is None:
            raise ValueError("the shrink and the CTC term need a marginal head on the acoustic encoder")
        text_vocab = text_encoder.frontend.vocab_size
        if head_vocab is not None and head_vocab != text_vocab:
            raise ValueError(f"acoustic CTC head vocab_size={head_vocab} != text encoder "
                             f"vocab_size={text_vocab}: both read the transcripts through one tokenizer")
        if text_encoder.length is not None or text_encoder.head is not None:
            raise ValueError("STAST's text encoder is TokenEmbedding → body only "
                             "(no length controller, no head)")
        self.encoder, self.text_encoder, self.decoder, self.shrink = encoder, text_encoder, decoder, shrink
        dim = text_encoder.frontend.dim
        self.adapter = nn.Sequential(nn.LayerNorm(acoustic_dim), nn.Linear(acoustic_dim, dim))
        self.weights = {"st": st_weight, "mt": mt_weight, "ctc": ctc_weight, "adapt": adapt_weight}
        self.adapt_distance, self.adapt_stop_gradient = adapt_distance, adapt_stop_gradient
        self.contrastive_temperature, self.label_smoothing = contrastive_temperature, label_smoothing

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    def forward(self, inputs: Tensor, lengths: Tensor) -> Encoded:
        """fbank (B, T, F), lengths (B,) → semantic ``Encoded`` (B, S, D) with the acoustic
        ``Encoded`` in ``previous``; S = CTC segments (with the shrink) or acoustic frames."""
        ac = self.encoder(inputs, lengths)
        h, n = ac.hidden, ac.lengths
        if self.shrink is not None:
            h, n = self.shrink(h, ac.logits, n)
        front = self.text_encoder.frontend
        x = front.dropout(self.adapter(h) + sinusoids(torch.arange(h.shape[1], device=h.device), front.dim))
        return Encoded(self.text_encoder.body(x, n), n, None, (ac,))

    def encoded_loss(self, enc: Encoded, targets: Tensor, target_lengths: Tensor,
                     scales: Mapping[str, float] | None = None, transcripts: Tensor | None = None,
                     transcript_lens: Tensor | None = None) -> dict[str, Tensor]:
        """Losses of an encoded batch → {'loss', 'st', 'mt', 'ctc', 'adapt'} per utterance.

        targets (B, U) target-language ids; transcripts (B, S) source ids (needed by the mt,
        ctc and adapt terms, which are left out without them).
        """
        b = targets.shape[0]
        weights = term_scales(scales, self.weights)
        on = {k for k, w in weights.items() if w}
        if transcripts is None:
            on &= {"st"}
        out = {}
        ce = lambda e: self.decoder.cross_entropy(e, targets, target_lengths, self.label_smoothing) / b  # noqa: E731
        if "st" in on:
            out["st"] = ce(enc)
        if "ctc" in on:
            out["ctc"] = ctc_loss(enc.previous[0], transcripts, transcript_lens) / b
        if on & {"mt", "adapt"}:
            text = self.text_encoder(transcripts, transcript_lens)
            if "mt" in on:
                out["mt"] = ce(text)
            if "adapt" in on:
                t = text.hidden.detach() if self.adapt_stop_gradient else text.hidden
                d = adaptation_distance(self.adapt_distance, enc.hidden.float(), enc.lengths, t.float(),
                                        text.lengths, self.contrastive_temperature)
                out["adapt"] = d.sum() / b
        out["loss"] = sum(weights[k] * v for k, v in out.items())
        return out

    def internal_lm(self) -> DecoderILM:
        """The internal LM of the shared decoder (the same for ST and MT): zero attention context."""
        return DecoderILM(self.decoder)

    def mt_model(self) -> AttentionModel:
        """The text path as an MT ``AttentionModel`` (transcript ids → target) sharing these modules."""
        return AttentionModel(self.text_encoder, self.decoder, ctc_weight=0.0,
                              label_smoothing=self.label_smoothing)
