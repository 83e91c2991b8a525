"""Lightning callbacks: export the trained model as a shareable brick."""

from __future__ import annotations

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
        save_brick(pl_module.model, out, interface, tokenizer=dm.tokenizer)
        if dm.source_tokenizer is not None:
            dm.source_tokenizer.save(out / "source_tokenizer.model")
        if getattr(dm, "transcript_tokenizer", None) is not None:
            dm.transcript_tokenizer.save(out / "transcript_tokenizer.model")
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
