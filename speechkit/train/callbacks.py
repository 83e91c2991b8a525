"""Lightning callbacks: export the trained model as a shareable brick."""

from __future__ import annotations

from pathlib import Path

import lightning as L

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
        interface = {"kind": type(pl_module.model).__name__, "input": dm.fbank.to_dict(),
                     "global_step": trainer.global_step}
        save_brick(pl_module.model, out, interface, tokenizer=dm.tokenizer)
        print(f"brick written to {out}")
