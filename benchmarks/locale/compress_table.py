"""The compression results table of recipes/locale/RESULTS.md, from what recipes/locale/compress.yaml's
stages wrote.

    python benchmarks/locale/compress_table.py [exp/compress]

Per run: test WER (ASR) or BLEU (MT, ST) from its decode result (``EXP/results/*.jsonl``, or the former
script's ``EXP/results.jsonl``; the last result per run), the weights.safetensors size of its brick, the
coverage and SAD recorded in its interface.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import load_results  # noqa: E402


def main(root: str = "exp/compress") -> None:
    x = Path(root)
    results = {name.removesuffix("_test"): res for name, res in load_results(x).items()}
    print("| run | WER | BLEU | weights (bytes) | compressed params | SAD flips (sum) | SAD from start |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, res in results.items():
        brick = x / name / "brick"
        if not brick.is_dir():
            continue
        comp = json.loads((brick / "interface.json").read_text()).get("compression") or {}
        cov, sad = comp.get("coverage", {}), comp.get("sad", {})
        share = f"{100 * cov['compressed'] / cov['total']:.1f}%" if cov else "-"
        flips = f"{sad['sad/total_flips']:,.0f}" if "sad/total_flips" in sad else "-"
        start = f"{100 * sad['sad/from_start']:.2f}%" if "sad/from_start" in sad else "-"
        size = (brick / "weights.safetensors").stat().st_size
        print(f"| {name} | {res['wer']:.2f} | {res['bleu']:.2f} | {size:,} | {share} | {flips} | {start} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
