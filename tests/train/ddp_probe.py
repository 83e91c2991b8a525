"""A callback the distributed tests add to ``speechkit fit`` (importable through PYTHONPATH=tests/train):
each rank writes what it did to ``<default_root_dir>/rank<R>.json`` at the end of training."""

import hashlib
import json
from pathlib import Path

import lightning as L


class RankRecord(L.Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_end(self, trainer, module):
        digest = hashlib.sha256()
        for name, t in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "global_step": trainer.global_step, "batches": self.batches, "weights": digest.hexdigest()}
        Path(trainer.default_root_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
