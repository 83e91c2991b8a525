"""MWER fine-tuning of transducers with fusion in the loop (METHODS.md §3, arXiv 2106.02302).

For each utterance an N-best list comes from beam search with the fused score; the hypotheses are
rescored with gradient, by the same ``Fusion`` (``search.fusion``: ``Fusion.sequence_score``),

    s(Y_i) = log P_E2E(Y_i | X) + λ_LM log P_LM(Y_i) − λ_ILM log P_ILM(Y_i) + β |Y_i|

(log P_E2E: minus torchaudio's RNN-T loss of Y_i, all alignments), renormalised over the N-best,
and the loss is ``Σ_i P̂(Y_i) (W(Y_i) − mean_j W(Y_j)) + e2e_weight · L_E2E`` with W the word errors.
MWER-SF: λ_ILM = 0. MWER-ILME: λ_ILM > 0, whose ILM term carries gradient into predictor and joiner.
Decode the result with the same weights (no re-tuning).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..lego.interface import Encoded
from ..metrics import word_errors
from ..nn.brick import BrickError
from ..pipelines.decode import load_lm
from ..search.fusion import Fusion
from ..search.transducer import beam_search
from .module import SpeechTask


def mwer_loss(scores: Tensor, errors: Tensor, mask: Tensor) -> Tensor:
    """Expected word errors minus their mean over each N-best list → (B,).

    scores (B, N) fused log-scores (with gradient), errors (B, N) word errors, mask (B, N) True
    for real hypotheses; P̂ = softmax of the scores over the real hypotheses of each row; a row
    without hypotheses gives 0.
    """
    p = scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
    n = mask.sum(1).clamp(min=1)
    mean = (errors * mask).sum(1) / n
    return (p * (errors - mean[:, None]) * mask).sum(1)


class MWERTask(SpeechTask):
    """Fine-tunes a ``Transducer`` with MWER (+ ``e2e_weight`` × its usual loss); otherwise ``SpeechTask``.

    Args (besides ``SpeechTask``'s; warm-start with ``init_from: {"": BRICK}``):
        lm: external LM brick directory (None: no LM term; MWER alone or with ILM subtraction). It is
            loaded in ``setup``, checked (tokenizer fingerprint, as in decoding) to speak the vocabulary
            of the training data (``datamodule.tokenizer``), which is the model's.
        lm_weight, ilm_weight, length_reward, lm_eos: the fusion used for the N-best and the scores.
        beam, nbest: beam search width and N-best size (4–8).
        e2e_weight: λ of the model's own loss (RNN-T + CTC [+ ILM]) added to the MWER loss.
    """

    def __init__(self, model: torch.nn.Module, lm: str | None = None, lm_weight: float = 0.0,
                 ilm_weight: float = 0.0, length_reward: float = 0.0, lm_eos: bool = True, beam: int = 4,
                 nbest: int = 4, e2e_weight: float = 0.1, **kwargs):
        super().__init__(model, **kwargs)
        if not hasattr(model, "joiner"):
            raise BrickError(f"MWER here fine-tunes transducers; got a {type(model).__name__}")
        if lm_weight and lm is None:
            raise ValueError(f"lm_weight={lm_weight} but no external LM brick (lm) was given")
        self.lm_brick, self.lm_weight, self.lm = lm, lm_weight, None
        self.fusion = Fusion(None, 0.0, ilm_weight, length_reward, lm_eos)  # the LM joins in setup
        self.beam, self.nbest, self.e2e_weight = beam, nbest, e2e_weight

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.lm_brick is None or self.lm is not None:
            return
        dm = self.trainer.datamodule if self.trainer else None
        if getattr(dm, "tokenizer", None) is None:
            raise BrickError(f"MWER's LM {self.lm_brick} is checked against the training data's tokenizer: "
                             "train with a SpeechDataModule")
        self.lm = load_lm(self.lm_brick, {"tokenizer": dm.tokenizer.info()},
                          f"the training data's tokenizer {dm.tokenizer_path}").requires_grad_(False)
        self.fusion = replace(self.fusion, lm=self.lm, lm_weight=self.lm_weight)

    def training_step(self, batch, batch_idx):
        m, f = self.model, self.fusion
        enc = m(batch["inputs"], batch["input_lens"])
        out = m.encoded_loss(enc, batch["targets"], batch["target_lens"])
        if self.lm is not None:
            self.lm.eval()
        m.eval()  # no dropout in the search
        nbests = beam_search(m, enc, self.beam, self.nbest, fusion=f)
        m.train()
        b, n = len(nbests), self.nbest
        tok = self.trainer.datamodule.tokenizer
        refs = [tok.decode(t[:k].tolist()) for t, k in zip(batch["targets"], batch["target_lens"])]
        hyps = [[h.tokens for h in nb] + [()] * (n - len(nb)) for nb in nbests]
        mask = torch.tensor([[j < len(nb) for j in range(n)] for nb in nbests], device=self.device)
        flat = [h for row in hyps for h in row]
        lens = torch.tensor([len(h) for h in flat], device=self.device)
        ys = torch.zeros(b * n, max(int(lens.max()), 1), dtype=torch.long, device=self.device)
        for i, h in enumerate(flat):
            ys[i, : len(h)] = torch.tensor(h, dtype=torch.long)
        errors = word_errors([r for r in refs for _ in range(n)], [tok.decode(list(h)) for h in flat])
        errors = torch.tensor(errors, dtype=torch.float, device=self.device).view(b, n)
        scores = self.sequence_scores(enc, ys, lens).view(b, n)
        mwer = mwer_loss(scores, errors, mask).mean()
        loss = mwer + self.e2e_weight * out["loss"]
        if not self._finite({"loss": loss, "mwer": mwer, "e2e": out["loss"]}):
            return None  # skipped (SpeechTask.nonfinite_skips), or NonFiniteLoss stops the run
        p = scores.detach().masked_fill(~mask, float("-inf")).softmax(-1)
        self.log_dict({"train/loss": loss, "train/mwer": mwer, "train/e2e": out["loss"],
                       "train/expected_errors": (p * errors).sum(1).mean()}, prog_bar=True, batch_size=b)
        return loss

    def sequence_scores(self, enc, ys: Tensor, lens: Tensor) -> Tensor:
        """Fused log-scores of hypotheses ys (B·N, U), lengths (B·N,) of an encoded batch of B → (B·N,)."""
        m = self.model
        dec = m.decoder_input(enc)
        rep = ys.shape[0] // dec.hidden.shape[0]
        dec = Encoded(dec.hidden.repeat_interleave(rep, 0), dec.lengths.repeat_interleave(rep, 0))
        return self.fusion.sequence_score(m, -m.rnnt_loss(dec, ys, lens), ys, lens)
