"""The streaming results tables of recipes/locale/RESULTS.md, from what recipes/locale/stream.yaml's
stages wrote.

    python benchmarks/locale/stream_table.py [exp/stream]

One row per run (``EXP/results/*.jsonl``, or the former script's ``EXP/results.jsonl``; the last result
per run, named by its hypotheses file): WER, RTF, chunk and compute latency, word-start error,
confidence AUC / ECE; then, per model, how often the streamed test hypotheses of two chunk sizes are
the same text (the search is exact per chunk size; the encoder's context is not).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import load_results  # noqa: E402

COLUMNS = ("wer", "cer", "rtf", "chunk_ms", "latency_ms_mean", "latency_ms_p95", "start_mae_ms",
           "start_median_ms", "confidence_auc", "confidence_ece", "words")


def main(root: str = "exp/stream") -> None:
    x = Path(root)
    results = load_results(x)
    print("| run | " + " | ".join(COLUMNS) + " |")
    print("| --- " * (len(COLUMNS) + 1) + "|")
    for name, res in results.items():
        print(f"| {name} | " + " | ".join(str(res.get(c, "-")) for c in COLUMNS) + " |")
    for model in ("small", "full", "full_long"):
        hyps = {p.stem: [json.loads(line)["hyp"] for line in open(p)]
                for p in sorted((x / "hyps").glob(f"{model}_chunk*_test.jsonl"))
                if re.fullmatch(rf"{model}_chunk\d+_test", p.stem)}
        for (a, ha), (b, hb) in itertools.combinations(hyps.items(), 2):
            same = sum(u == v for u, v in zip(ha, hb))
            print(f"{a} vs {b}: same text for {same}/{len(ha)} utterances ({100 * same / len(ha):.1f}%)")


if __name__ == "__main__":
    main(*sys.argv[1:])
