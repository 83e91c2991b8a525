"""How closely STAST's shrink, on an ASR brick's CTC head, tracks the transcript length
(recipes/locale/RESULTS.md, STAST section).

    python benchmarks/locale/shrink_lengths.py [BRICK] [MANIFEST]

The transcripts are tokenised with the brick's own tokenizer (its CTC head's vocabulary).
"""

import sys

import torch

from speechkit.data.dataset import collate
from speechkit.data.manifest import load_manifest
from speechkit.lego.interface import Shrink
from speechkit.pipelines.bricks import load_brick
from speechkit.pipelines.decode import brick_dataset


def main(brick="exp/locale/full/brick", manifest="data/locale/st/en-de/dev.jsonl") -> None:
    torch.set_num_threads(1)
    loaded = load_brick(brick)
    model = loaded.module
    ds = brick_dataset(loaded, load_manifest(manifest, require_audio=True), None, manifest)
    encoder, shrink, diff = model.encoder.eval(), Shrink(), []
    with torch.no_grad():
        for start in range(0, len(ds), 32):
            b = collate([ds[i] for i in range(start, min(start + 32, len(ds)))])
            enc = encoder(b["inputs"], b["input_lens"])
            _, n = shrink(enc.hidden, enc.logits, enc.lengths)
            diff += (n - b["target_lens"]).tolist()
    d = torch.tensor(diff)
    print(f"{manifest}: {len(d)} utterances; shrunk length == transcript length: "
          f"{100 * (d == 0).float().mean():.1f}%, within 1: {100 * (d.abs() <= 1).float().mean():.1f}%, "
          f"mean |diff| {d.abs().float().mean():.2f}, mean diff {d.float().mean():+.2f} tokens")


if __name__ == "__main__":
    main(*sys.argv[1:])
