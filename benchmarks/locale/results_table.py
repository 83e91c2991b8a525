"""Every decode / stream result of a locale experiment as one table (recipes/locale/*.yaml, the
``results`` stages; numbers for recipes/locale/RESULTS.md).

    python benchmarks/locale/results_table.py EXP      # e.g. exp/lego

Reads ``EXP/results/*.jsonl``: what the experiment's stages printed (``speechkit decode --json`` and
``speechkit stream --manifest``: one JSON summary per run, naming its hypotheses file), and
``EXP/results.jsonl`` of the former scripts (``{"name", "result"}`` lines) if there is one. A run is
named by its hypotheses file (``EXP/hyps/NAME.jsonl``; the former names, with spaces, are written the
same way); the last result of a name wins. Lines without hypotheses (``adapt-ilm --json``) are left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("utts", "wer", "cer", "bleu", "chrf")


def load_results(root: str | Path) -> dict[str, dict]:
    """{run name: its summary}, in the order the runs were written."""
    x = Path(root)
    files = ([x / "results.jsonl"] if (x / "results.jsonl").is_file() else []) + \
        sorted((x / "results").glob("*.jsonl"))
    if not files:
        raise SystemExit(f"error: no results in {x} (neither {x}/results/*.jsonl nor {x}/results.jsonl)")
    results = {}
    for path in files:
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: {path}:{n}: not a JSON line ({e})") from None
            if "name" in r and "result" in r:  # the former scripts' line
                results[r["name"].replace(" ", "_")] = r["result"]
            elif "hyps" in r:
                results[Path(r["hyps"]).stem] = r
    return results


def main(root: str = ".") -> None:
    results = load_results(root)
    print("| run | " + " | ".join(COLUMNS) + " |")
    print("| --- " * (len(COLUMNS) + 1) + "|")
    for name, res in results.items():
        print(f"| {name} | " + " | ".join(str(res.get(c, "-")) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
