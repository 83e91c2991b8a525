"""What plain DDP costs on the CPU: ``speechkit fit`` of the locale demo model with 1 and 2 processes (gloo,
one thread each), and with 2 processes with and without DDP's unused-parameter search (which the task
switches on when its loss schedule leaves parameters out of the first steps, ``SpeechTask.leaves_
parameters_out``).

    python benchmarks/ddp.py [--data data/locale] [--steps 60] [--json]

All three runs train the demo recipe (recipes/locale/conf/demo.yaml) with the RNN-T term on from step 0
(so every parameter is used and both DDP settings are valid) for ``--steps`` steps, no validation or
checkpoints (the first comes at step 200), each in its own ``speechkit fit`` subprocess with ``StepClock``
(benchmarks/gpu_check.py): rank 0's time per step and utterances per second over the steps after the
tenth. A 2-process step holds two batches (one per rank), so the scaling figure is utterances/s,
2 processes over 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from gpu_check import CLOCK_ENV  # noqa: E402

RUNS = {  # name → (processes, strategy)
    "1 process": (1, "auto"),
    "ddp": (2, "ddp_find_unused_parameters_false"),
    "ddp + unused search": (2, "ddp_find_unused_parameters_true"),
}


def fit(data: Path, steps: int, devices: int, strategy: str, work: Path) -> dict:
    clock = work / "clock.json"
    asr, d = data / "asr", "--data.init_args."
    cmd = [sys.executable, "-m", "speechkit", "fit", "-c", str(ROOT / "recipes/locale/conf/demo.yaml"),
           f"--trainer.default_root_dir={work}", f"{d}train={asr / 'train.jsonl'}",
           f"{d}valid={asr / 'dev.jsonl'}", f"{d}tokenizer={work / 'tok.model'}", f"{d}max_valid_utts=10",
           "--trainer.callbacks+=gpu_check.StepClock",
           "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0", "--trainer.logger=false",
           f"--trainer.max_steps={steps}", "--trainer.max_time=null", "--trainer.accelerator=cpu",
           f"--trainer.devices={devices}", f"--trainer.strategy={strategy}",
           "--model.init_args.loss_start_steps={rnnt: 0}", "--threads=1"]
    env = {**os.environ, CLOCK_ENV: str(clock),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if p.returncode != 0 or not clock.exists():
        raise SystemExit(f"speechkit fit ({devices} processes, {strategy}) failed:\n{p.stderr[-3000:]}")
    r = json.loads(clock.read_text())
    t, utts = r["times"][10:], r["utts"][10:]  # after the tenth step (warm-up)
    dt = [b - a for a, b in zip(t, t[1:])]
    return {"steps": len(dt), "median_step_s": round(statistics.median(dt), 4),
            "utts_per_s": round(sum(utts[:len(dt)]) * devices / (t[-1] - t[0]), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "locale"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (devices, strategy) in RUNS.items():
            work = Path(tmp) / name.replace(" ", "_").replace("+", "")
            out[name] = fit(Path(a.data), a.steps, devices, strategy, work)
            print(f"{name:22s} {out[name]}", file=sys.stderr)
    out["scaling_2_over_1"] = round(out["ddp"]["utts_per_s"] / out["1 process"]["utts_per_s"], 3)
    search, plain = out["ddp + unused search"], out["ddp"]
    out["unused_search_cost"] = round(search["median_step_s"] / plain["median_step_s"], 3)
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
