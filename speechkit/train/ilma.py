"""ILMA: text-only domain adaptation of a transducer's internal LM (METHODS.md §3, arXiv 2110.05354).

Only the joiner's last linear layer (``joiner.out``) is trained, on target-domain text:

    loss = CE(P_ILM, text) + ρ · KL(P_ILM^frozen ‖ P_ILM)

with P_ILM the softmax over the non-blank outputs of the joiner without its encoder term
(``Transducer.internal_lm()``; the loss is ``models.base.ilm_loss``, the one of ILM training too) and
P_ILM^frozen the same for the unadapted model; the blank
row of ``joiner.out`` keeps its value. Start from a model trained with ILM training
(``Transducer(ilm_weight>0)``). The adapted brick decodes without an external LM.
``speechkit adapt-ilm BRICK TEXT --out DIR`` runs it (``run_ilma``).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import warnings
from pathlib import Path

import lightning as L
import torch

from ..data.datamodule import LMDataModule
from ..models.base import ilm_loss
from ..nn.brick import BrickError
from ..pipelines.bricks import load_brick, save_brick
from .callbacks import format_progress_bar
from .cli import quiet_lightning


class ILMATask(L.LightningModule):
    """Trains ``model.joiner.out`` (blank row excluded) with CE + ρ·KL on text batches.

    Args:
        model: a ``speechkit.models.transducer.Transducer`` (e.g. loaded from a brick).
        rho: weight of the KL term to the frozen internal LM (0.1–0.9 in the paper).
        lr: Adam learning rate (no weight decay: the blank row must not move).
    Logs ``train/ce``, ``train/kl`` and, on validation text, ``val/ilm_ppl`` (token perplexity of
    the internal LM) and ``val/kl``. Every module stays in eval mode (as the brick is loaded): no dropout,
    so the adapted layer sees the internal LM that decoding uses; ``run_ilma`` tells Lightning so.
    """

    def __init__(self, model: torch.nn.Module, rho: float = 0.5, lr: float = 1e-3):
        super().__init__()
        if not hasattr(model, "joiner") or not hasattr(model, "internal_lm"):
            raise BrickError(f"ILMA adapts a transducer's joiner; got a {type(model).__name__}")
        self.model, self.rho, self.lr = model, rho, lr
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
        model.requires_grad_(False)
        model.joiner.out.requires_grad_(True)
        blank = model.blank
        for p in model.joiner.out.parameters():  # the blank row gets no gradient
            p.register_hook(lambda g: g.index_fill(0, torch.tensor([blank], device=g.device), 0.0))
        self._val: list[torch.Tensor] = []

    def losses(self, targets: torch.Tensor, target_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """targets (B, U) → {'ce', 'kl', 'tokens'} summed over the batch's tokens (the transducer's internal
        LM has no end of sentence: U_b tokens per sequence)."""
        out = ilm_loss(self.model.internal_lm(), targets, target_lengths, self.frozen.internal_lm())
        return {"ce": out["ce"].sum(), "kl": out["kl"].sum(), "tokens": target_lengths.sum()}

    def training_step(self, batch, batch_idx):
        out = self.losses(batch["targets"], batch["target_lens"])
        b = batch["targets"].shape[0]
        loss = (out["ce"] + self.rho * out["kl"]) / b
        self.log_dict({"train/loss": loss, "train/ce": out["ce"] / b, "train/kl": out["kl"] / b},
                      prog_bar=True, batch_size=b)
        return loss

    def validation_step(self, batch, batch_idx):
        out = self.losses(batch["targets"], batch["target_lens"])
        self._val.append(torch.stack([v.float() for v in out.values()]))

    def on_validation_epoch_end(self) -> None:
        if self._val:
            ce, kl, tokens = torch.stack(self._val).sum(0)
            self.log_dict({"val/ilm_ppl": torch.exp(ce / tokens), "val/kl": kl / tokens}, prog_bar=True)
        self._val = []

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.joiner.out.parameters(), lr=self.lr)


def run_ilma(brick: str | Path, text: str | Path, out: str | Path, valid: str | Path | None = None,
             rho: float = 0.5, steps: int = 500, lr: float = 1e-3, max_tokens: int = 2000,
             seed: int = 0, device: torch.device | None = None) -> dict:
    """Adapt ``brick`` to the sentences of ``text`` (JSONL manifest or plain text, one per line) on
    ``device`` (None: the CPU) and write the adapted brick to ``out`` → a summary (internal-LM perplexities
    before and after)."""
    b = load_brick(brick)
    model = b.module
    L.seed_everything(seed, verbose=False)
    task = ILMATask(model, rho, lr)
    dm = LMDataModule(str(text), str(valid or text), str(b.tokenizer.path), vocab_size=model.vocab_size,
                      max_frames=max_tokens, seed=seed)
    quiet_lightning()
    logger = L.pytorch.loggers.CSVLogger(str(Path(out).parent), name=f"{Path(out).name}-ilma")
    device = torch.device(device or "cpu")
    gpu = device.type == "cuda"
    trainer = L.Trainer(accelerator="gpu" if gpu else "cpu", devices=[device.index or 0] if gpu else 1,
                        max_steps=steps, enable_checkpointing=False,
                        logger=logger, num_sanity_val_steps=0,
                        val_check_interval=min(100, steps), check_val_every_n_epoch=None,
                        log_every_n_steps=10, enable_model_summary=False)
    format_progress_bar(trainer)
    before = trainer.validate(task, datamodule=dm, verbose=False)[0]
    with warnings.catch_warnings():  # eval mode throughout is intended (ILMATask)
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")
        trainer.fit(task, datamodule=dm)
    after = trainer.validate(task, datamodule=dm, verbose=False)[0]
    summary = {"brick": str(brick), "text": str(text), "valid": str(valid or text), "rho": rho,
               "steps": steps, "lr": lr, "ilm_ppl_before": round(before["val/ilm_ppl"], 3),
               "ilm_ppl_after": round(after["val/ilm_ppl"], 3), "kl_after": round(after["val/kl"], 4)}
    if not math.isfinite(summary["ilm_ppl_after"]):
        raise RuntimeError(f"ILMA diverged (validation ILM perplexity {summary['ilm_ppl_after']}); "
                           "lower --lr")
    save_brick(model.eval(), out, {**b.interface, "ilma": summary}, b.tokenizers)
    print(json.dumps(summary), file=sys.stderr)
    return summary
