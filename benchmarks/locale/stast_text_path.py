"""Decode text with the MT path of a STAST brick (``STAST.mt_model()``: the text encoder and the
decoder it shares with ST) and score it (recipes/locale/RESULTS.md, STAST section).

    python benchmarks/locale/stast_text_path.py BRICK MT_MANIFEST [BEAM]
"""

import sys
from pathlib import Path

import torch

from speechkit.data.dataset import TextDataset
from speechkit.data.manifest import load_manifest
from speechkit.metrics import score
from speechkit.pipelines.bricks import load_brick
from speechkit.pipelines.decode import DecodeOptions, decode_dataset
from speechkit.tokenizer import Tokenizer


def main(brick: str, manifest: str, beam: str = "1") -> None:
    torch.set_num_threads(1)
    loaded = load_brick(brick)
    model, iface = loaded.module, loaded.interface
    ds = TextDataset(load_manifest(manifest), Tokenizer(Path(brick) / "tokenizer.model"),
                     Tokenizer(Path(brick) / "transcript_tokenizer.model"), iface["target_lang"], manifest)
    res = decode_dataset(model.mt_model(), ds, DecodeOptions(beam=int(beam)))
    print(f"{manifest}: {len(res)} sentences, beam {beam}: "
          f"{score([r['ref'] for r in res], [r['hyp'] for r in res])}")


if __name__ == "__main__":
    main(*sys.argv[1:])
