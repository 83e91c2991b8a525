"""Lightning callbacks: export the trained model as a shareable brick; compression schedule and SAD."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from ..lego.brick import save_brick


class ExportBrick(L.Callback):
    """At the end of fit, write ``model`` as a brick (safetensors + config + interface + tokenizer).

    Args:
        dirpath: target directory (default: ``<trainer.default_root_dir>/brick``).
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "brick")
        encoder = getattr(pl_module.model, "encoder", None)  # a language model has none
        interface = {"kind": type(pl_module.model).__name__, "input": dm.input_info(),
                     "input_kind": getattr(encoder, "input_kind", "fbank" if encoder else "none"),
                     "target_lang": dm.target_lang, "global_step": trainer.global_step}
        if encoder is not None:
            interface["length_ratio"] = length_ratio(encoder, dm.sets["train"])
        state = None
        if getattr(pl_module, "compress", None) is not None:  # fold masks and quantizers (compress.export)
            from ..compress.export import fold

            state, interface["compression"] = fold(pl_module.model, pl_module.compress)
            interface["compression"]["coverage"] = pl_module.coverage.counts()
            sched = [c for c in trainer.callbacks if isinstance(c, CompressionSchedule)]
            interface["compression"]["sad"] = sched[0].summary() if sched else {}
        tokenizers = {"target": dm.tokenizer, "source": dm.source_tokenizer,
                      "transcript": getattr(dm, "transcript_tokenizer", None)}
        save_brick(pl_module.model, out, interface, {k: t for k, t in tokenizers.items() if t}, state=state)
        print(f"brick written to {out}")


def length_ratio(encoder, dataset) -> dict[str, float]:
    """Encoder output frames (K) per target token (U) over a training set: 5th/50th/95th percentile and mean.

    Recorded in interface.json so that a decoder reused on another encoder can check (and
    a length controller can adjust) the ratio it was trained with.
    """
    frames = encoder.output_lengths(torch.tensor(dataset.lengths())).float()
    tokens = torch.tensor([len(t) for t in dataset.targets]).float()
    r = frames / tokens
    q = torch.quantile(r, torch.tensor([0.05, 0.5, 0.95]))
    return {"p5": round(float(q[0]), 3), "median": round(float(q[1]), 3), "p95": round(float(q[2]), 3),
            "mean": round(float(r.mean()), 3)}


class CompressionSchedule(L.Callback):
    """The time line of a ``compress:`` section, and SAD logging (``SpeechTask`` adds it by itself).

    Before every training batch and validation, from ``trainer.global_step`` alone (so a resumed
    run continues where it was): N:M masks off during the dense warm-up (``sparsity.start_step``),
    frozen from ``sparsity.freeze_step``; fake quantization off until ``quant.start_step``, then
    noise tempering γ0·exp(−(t − start)/τ).

    SAD (sparse architecture divergence): every ``sad_every`` steps the masks are compared with
    the previous check: ``sad/<layer>`` (fraction of entries that flipped), ``sad/total_flips``
    and ``sad/total`` (fraction over all masks) are logged; ``sad/from_start`` compares with the
    masks at the first check after sparsity started.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.previous: dict[str, torch.Tensor] = {}
        self.first: dict[str, torch.Tensor] = {}
        self.flips = 0
        self.last: dict[str, float] = {}

    def summary(self) -> dict[str, float]:
        """Totals for the exported brick's interface.json: flips summed over checks, fraction from start."""
        return {k: v for k, v in self.last.items() if k in ("sad/total_flips", "sad/from_start")}

    def _apply(self, model, step: int) -> None:
        from ..compress.apply import set_state

        sp, q = self.cfg.sparsity, self.cfg.quant
        kw = {}
        if sp is not None:
            frozen = sp.freeze_step is not None and step >= sp.freeze_step
            kw.update(sparsity=step >= sp.start_step, frozen=frozen)
        if q is not None:
            on = step >= q.start_step
            decay = math.exp(-(step - q.start_step) / q.noise_decay_steps)
            noise = q.noise * decay if on and q.noise else 0.0
            kw.update(quant=on, noise=noise)
        set_state(model, **kw)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._apply(pl_module.model, trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._apply(pl_module.model, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sp, step = self.cfg.sparsity, trainer.global_step
        if sp is None or step < sp.start_step or step % self.cfg.sad_every:
            return
        masks = current_masks(pl_module.model)
        if not self.first:
            self.first = masks
        if self.previous:
            per_layer, flips = sad(self.previous, masks)
            self.flips += flips
            total = sum(m.numel() for m in masks.values())
            logs = {f"sad/{k}": v for k, v in per_layer.items()}
            logs.update({"sad/total": flips / total, "sad/total_flips": float(self.flips),
                         "sad/from_start": sad(self.first, masks)[1] / total})
            for logger in trainer.loggers:  # directly: SAD steps need not meet log_every_n_steps
                logger.log_metrics(logs, step=step)
            self.last = logs
        self.previous = masks

    def state_dict(self) -> dict:
        return {"previous": self.previous, "first": self.first, "flips": self.flips, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.previous, self.first, self.flips, self.last = (state["previous"], state["first"], state["flips"],
                                                            state["last"])


def current_masks(model) -> dict[str, torch.Tensor]:
    """A copy of every N:M mask of ``model``: {"module.weight": bool tensor}."""
    from ..compress.apply import compressors
    from ..compress.sparsity import NMSparse

    return {k: p.mask.detach().clone().cpu() for k, p in compressors(model, NMSparse).items()}


def sad(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
    """Sparse architecture divergence between two sets of masks → ({layer: flipped fraction}, flips)."""
    per_layer, total = {}, 0
    for k, m in after.items():
        flips = int((m != before[k]).sum())
        per_layer[k] = flips / m.numel()
        total += flips
    return per_layer, total
