"""Decode text with the MT path of a STAST brick (``STAST.mt_model()``: the text encoder and the
decoder it shares with ST) and score it (recipes/locale/RESULTS.md, STAST section).

    python benchmarks/locale/stast_text_path.py BRICK MT_MANIFEST [BEAM]
"""

import sys

import torch

from speechkit.data.dataset import TextDataset
from speechkit.data.manifest import load_manifest
from speechkit.metrics import score
from speechkit.pipelines.bricks import load_brick
from speechkit.pipelines.decode import DecodeOptions, decode_dataset


def main(brick: str, manifest: str, beam: str = "1") -> None:
    torch.set_num_threads(1)
    b = load_brick(brick)
    ds = TextDataset(load_manifest(manifest), b.tokenizer, b.tokenizer_for("transcript"),
                     b.interface["target_lang"], manifest)
    res = decode_dataset(b.module.mt_model(), ds, DecodeOptions(beam=int(beam)))
    print(f"{manifest}: {len(res)} sentences, beam {beam}: "
          f"{score([r['ref'] for r in res], [r['hyp'] for r in res])}")


if __name__ == "__main__":
    main(*sys.argv[1:])
