"""The transducer ASR model: encoder brick + predictor + joiner, RNN-T loss + CTC on the interface."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..lego.interface import Encoded, interface_ctc, interface_logits
from ..lego.transducer import Joiner
from .base import EncoderDecoderModel, TokenLM, ilm_loss, scale_of, term_scales
from .fused_rnnt import fused_rnnt_loss
from .pruned_rnnt import pruned_rnnt_loss


def joiner_rnnt_loss(joiner: Joiner, enc: Tensor, pred: Tensor, targets: Tensor, frames: Tensor,
                     labels: Tensor, blank: int, sub_batch: int | None = None) -> Tensor:
    """−log P(y | x) per utterance (B,): torchaudio's ``rnnt_loss`` on the joiner's full lattice (its fused
    log-softmax: no separate log-prob lattice is stored). enc (B, T, E), pred (B, U+1, P) the joiner's
    inputs, targets (B, U), frames / labels (B,) the lengths.

    ``sub_batch``: the joiner and the loss run for that many utterances at a time (grouped by lattice
    size, each group cut to its own longest T and U) under ``torch.utils.checkpoint``, so only one
    group's (n, T_g, U_g+1, V+1) lattice is alive at once, in the forward and in the backward (which
    runs each group's joiner again): peak lattice memory ∝ sub_batch / B for one more joiner forward.
    """
    def lattice_loss(enc, pred, targets, frames, labels):
        logits = joiner(enc[:, :, None], pred[:, None])  # (n, T, U+1, V+1)
        return AF.rnnt_loss(logits.float(), targets.int(), frames.int(), labels.int(), blank=blank,
                            reduction="none")

    if not sub_batch or sub_batch >= enc.shape[0]:
        return lattice_loss(enc, pred, targets, frames, labels)
    order = (frames * (labels + 1)).argsort(descending=True)  # similar lattice sizes together
    parts = []
    for idx in order.split(sub_batch):
        t, u = int(frames[idx].max()), int(labels[idx].max())
        parts.append(checkpoint(lattice_loss, enc[idx, :t], pred[idx, : u + 1], targets[idx, :u], frames[idx],
                                labels[idx], use_reentrant=False))
    return torch.cat(parts)[order.argsort()]


class Transducer(EncoderDecoderModel):
    """RNN-T over the interface vocabulary, with the LegoNN marginal head trained by CTC.

    loss = rnnt_weight · RNNT (``rnnt_impl``: "torchaudio", the joiner on the whole lattice, or "fused", the
    same exact loss a tile of frames at a time with no (B, T, U+1, V+1) lattice, ``models/fused_rnnt.py``;
    or, with ``prune_range``, simple_weight · simple + pruned: the pruned loss of
    ``models/pruned_rnnt.py``; both run their recursion as Triton kernels on CUDA)
    + ctc_weight · CTC(marginal head)
    [+ ilm_weight · CE(internal LM) on the transcripts: ILM training, METHODS.md §3], each summed
    over the batch and divided by the batch size. The pruned loss's options: ``prune_range`` (s, label
    positions per frame), ``simple_weight``, and the simple loss's smoothing ``lm_only_scale`` /
    ``am_only_scale`` (k2's defaults 0.25 / 0; ``pruned_rnnt.simple_lattice``); its warm-up is
    SpeechTask's ``loss_start_steps`` / ``loss_ramp_steps`` for the term "pruned". ``rnnt_sub_batch``: the
    full loss's lattice a few utterances at a time (``joiner_rnnt_loss``: less memory, a second joiner
    forward).

    With an ``ingestor`` (``WEmb``/``BeamConv``) this is the LegoNN transducer: the joiner
    reads the ingested marginals instead of the encoder's hidden states, so the
    (ingestor, predictor, joiner) decoder can be reused with any encoder of the same
    vocabulary. Without one (default) the joiner reads ``Encoded.hidden``.
    """

    def __init__(self, encoder: nn.Module, predictor: nn.Module, joiner: Joiner,
                 ctc_weight: float = 0.3, rnnt_weight: float = 1.0, ingestor: nn.Module | None = None,
                 ilm_weight: float = 0.0, prune_range: int | None = None, simple_weight: float = 0.5,
                 lm_only_scale: float = 0.25, am_only_scale: float = 0.0, rnnt_sub_batch: int | None = None,
                 rnnt_impl: str = "torchaudio"):
        super().__init__()
        vocabs = {"encoder head": encoder.vocab_size, "predictor": predictor.vocab_size,
                  "joiner": joiner.vocab_size, "ingestor": getattr(ingestor, "vocab_size", None)}
        if len({v for v in vocabs.values() if v is not None}) != 1:
            raise ValueError(f"vocabulary sizes of the parts disagree: {vocabs}")
        self.encoder, self.predictor, self.joiner, self.ingestor = encoder, predictor, joiner, ingestor
        self.ctc_weight, self.rnnt_weight, self.ilm_weight = ctc_weight, rnnt_weight, ilm_weight
        self.prune_range, self.simple_weight = prune_range, simple_weight
        self.lm_only_scale, self.am_only_scale = lm_only_scale, am_only_scale
        if rnnt_sub_batch is not None and rnnt_sub_batch < 1:
            raise ValueError(f"rnnt_sub_batch must be >= 1 utterances, got {rnnt_sub_batch}")
        self.rnnt_sub_batch = rnnt_sub_batch
        if rnnt_impl not in ("torchaudio", "fused"):
            raise ValueError(f"rnnt_impl must be 'torchaudio' or 'fused', got {rnnt_impl!r}")
        if rnnt_impl == "fused" and (not isinstance(joiner, Joiner) or rnnt_sub_batch):
            raise ValueError("rnnt_impl='fused' needs speechkit's Joiner and no rnnt_sub_batch (it tiles "
                             "itself)")
        self.rnnt_impl = rnnt_impl
        if prune_range is not None:  # the pruned loss's additive "simple" joiner (models/pruned_rnnt.py)
            if prune_range < 2:
                raise ValueError(f"prune_range must be >= 2 label positions, got {prune_range}")
            if min(lm_only_scale, am_only_scale) < 0 or lm_only_scale + am_only_scale > 1:
                raise ValueError(f"lm_only_scale and am_only_scale must be >= 0 with a sum <= 1, got "
                                 f"{lm_only_scale} and {am_only_scale}")
            self.simple_am = nn.Linear(joiner.enc_proj.in_features, joiner.vocab_size + 1)
            self.simple_lm = nn.Linear(joiner.pred_proj.in_features, joiner.vocab_size + 1)

    @property
    def vocab_size(self) -> int:
        return self.joiner.vocab_size

    @property
    def blank(self) -> int:
        return self.joiner.vocab_size

    def decoder_input(self, enc: Encoded) -> Encoded:
        """What the joiner reads: the ingested marginals (LegoNN) or the encoder's hidden states."""
        if self.ingestor is None:
            return enc
        hidden, lengths = self.ingestor(interface_logits(enc), enc.lengths)
        return Encoded(hidden, lengths)

    def encoded_loss(self, enc: Encoded, targets: Tensor, target_lengths: Tensor,
                     scales: Mapping[str, float] | None = None) -> dict[str, Tensor]:
        """Losses of an encoded batch → {'loss', 'rnnt', 'ctc'[, 'ilm'][, 'simple', 'pruned']}. A term
        whose scale is 0 is not computed (a CTC-only warm-up skips the costly transducer lattice); with
        ``prune_range`` the 'pruned' scale multiplies the pruned loss inside the 'rnnt' term (its warm-up:
        the simple loss alone first, then a ramp)."""
        b = targets.shape[0]
        w = term_scales(scales, {"rnnt": self.rnnt_weight, "ctc": self.ctc_weight, "ilm": self.ilm_weight})
        out = {}
        if w["rnnt"]:
            dec = self.decoder_input(enc)
            if self.prune_range is None:
                out["rnnt"] = self.rnnt_loss(dec, targets, target_lengths).sum() / b
            else:
                simple, pruned = self.pruned_loss(dec, targets, target_lengths)
                out["simple"], out["pruned"] = simple.sum() / b, pruned.sum() / b
                out["rnnt"] = self.simple_weight * out["simple"] + scale_of(scales, "pruned") * out["pruned"]
        if w["ctc"]:
            out["ctc"] = interface_ctc(enc, targets, target_lengths) / b
        if w["ilm"]:
            out["ilm"] = ilm_loss(self.internal_lm(), targets, target_lengths)["ce"].sum() / b
        out["loss"] = sum(w[k] * out[k] for k in w if k in out)
        return out

    def rnnt_loss(self, dec: Encoded, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """−log P(targets | joiner input), all alignments (torchaudio, or fused: ``rnnt_impl``) → (B,).
        ``dec``: what the joiner reads (``decoder_input``), one row per target row."""
        if self.rnnt_impl == "fused":
            return fused_rnnt_loss(self.joiner, dec.hidden, self.predictor(targets), targets, dec.lengths,
                                   target_lengths, self.blank)
        return joiner_rnnt_loss(self.joiner, dec.hidden, self.predictor(targets), targets, dec.lengths,
                                target_lengths, self.blank, self.rnnt_sub_batch)

    def pruned_loss(self, dec: Encoded, targets: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(simple, pruned) −log P(targets | joiner input), each (B,): the pruned RNN-T loss with windows
        of ``prune_range`` label positions (``speechkit.models.pruned_rnnt``; no (B, T, U+1, V+1) lattice)."""
        pred = self.predictor(targets)  # (B, U+1, P)
        am, lm = self.simple_am(dec.hidden), self.simple_lm(pred)  # (B, T, V+1), (B, U+1, V+1)
        return pruned_rnnt_loss(self.joiner, dec.hidden, pred, am, lm, targets, dec.lengths, target_lengths,
                                self.blank, self.prune_range, self.lm_only_scale, self.am_only_scale)

    def internal_lm(self) -> TransducerILM:
        """The internal LM: the joiner without its encoder term over the predictor (``TokenLM``)."""
        return TransducerILM(self.predictor, self.joiner)


class TransducerILM(TokenLM):
    """A transducer's internal LM (METHODS.md §3) as a ``TokenLM``: the joiner with its encoder term
    removed, softmax over the V non-blank outputs, ``P_ILM(k | y≤u) ∝ exp joiner(0, predictor(y≤u))_k``.
    It has no end of sentence: column V of its log-probs is 0 (``has_eos = False``). Its state is the
    predictor's (the predictor state API of ``speechkit.lego.transducer``)."""

    has_eos = False

    def __init__(self, predictor: nn.Module, joiner: Joiner):
        self.predictor, self.joiner, self.vocab_size = predictor, joiner, joiner.vocab_size

    def _logp(self, pred: Tensor) -> Tensor:
        """Predictor outputs (..., P) → (..., V+1): log-softmax over the V labels, then 0 (no end)."""
        logp = self.joiner.internal_lm_logits(pred)[..., : self.vocab_size].float().log_softmax(-1)
        return F.pad(logp, (0, 1))

    def initial_state(self, n: int, device):
        return self.predictor.initial_state(n, device)

    def step(self, tokens: Tensor, state) -> tuple[Tensor, object]:
        out, state = self.predictor.step(tokens, state)
        return self._logp(out), state

    def select(self, state, index: Tensor):
        return self.predictor.select(state, index)

    def where(self, mask: Tensor, new, old):
        return self.predictor.where(mask, new, old)

    def logprobs(self, targets: Tensor) -> Tensor:
        return self._logp(self.predictor(targets))  # (B, U+1, V+1)
