"""How closely STAST's shrink, on an ASR brick's CTC head, tracks the transcript length
(recipes/locale/RESULTS.md, STAST section).

    python recipes/locale/shrink_lengths.py [BRICK] [MANIFEST] [TRANSCRIPT_TOKENIZER]
"""

import sys

import torch

from speechkit.data.dataset import SpeechDataset, collate
from speechkit.data.manifest import load_manifest
from speechkit.features import FbankConfig
from speechkit.lego.brick import load_brick
from speechkit.lego.interface import Shrink
from speechkit.tokenizer import Tokenizer


def main(brick="exp/locale/full/brick", manifest="data/locale/st/en-de/dev.jsonl",
         tokenizer="data/locale/tokenizer/en128.model") -> None:
    torch.set_num_threads(1)
    model, iface = load_brick(brick)
    tok = Tokenizer(tokenizer)
    fbank = FbankConfig(**{k: v for k, v in iface["input"].items() if k != "kind"})
    ds = SpeechDataset(load_manifest(manifest, require_audio=True), tok, fbank, source=manifest)
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
