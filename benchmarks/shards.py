"""Training from shards: memory that does not grow with the corpus, and throughput against the in-memory
feature cache, side by side.

    python benchmarks/shards.py [--data data/locale] [--work /tmp/shards-bench] [--scale 10] [--steps 150]
        [--workers 4] [--json]

1. Shards (``speechkit.data.shards.write_shards``, 128 MB each) of the locale training manifest, and of a
   corpus ``--scale`` times its size: every utterance repeated under new ids (``ID-rK``), its features
   computed again. Both are kept in ``--work`` (a rerun reuses them).
2. Three ``speechkit fit`` runs of the locale demo model (recipes/locale/conf/demo.yaml, RNN-T from step 0,
   ``--steps`` steps, ``--workers`` loader workers, one training thread, no validation): from the 1×
   shards, from the ``--scale``× shards, and from the manifest with its in-memory feature cache
   (``data.cache_dir: auto``, built first if missing). While each runs, the resident memory (RSS, from
   /proc) of the training process and all its descendants (the loader workers) is summed every 0.2 s:
   the peak is reported. Utterances per second come from ``StepClock`` (benchmarks/gpu_check.py) over the
   steps after the tenth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from gpu_check import CLOCK_ENV  # noqa: E402

from speechkit.data.manifest import load_manifest, save_manifest  # noqa: E402
from speechkit.data.shards import is_shards, write_shards  # noqa: E402


def scaled_manifest(src: Path, out: Path, scale: int) -> Path:
    """``src``'s utterances ``scale`` times, under new ids."""
    utts = load_manifest(src)
    save_manifest([replace(u, id=f"{u.id}-r{k}") for k in range(scale) for u in utts], out)
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB (from /proc)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    total, todo = 0, [pid]
    while todo:
        q = todo.pop()
        todo += children.get(q, [])
        try:
            for line in Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def fit(train: str, work: Path, a) -> dict:
    clock = work / "clock.json"
    clock.unlink(missing_ok=True)
    d = "--data.init_args."
    cmd = [sys.executable, "-m", "speechkit", "fit", "-c", str(ROOT / "recipes/locale/conf/demo.yaml"),
           f"--trainer.default_root_dir={work}", f"{d}train={train}",
           f"{d}valid={Path(a.data) / 'asr' / 'dev.jsonl'}", f"{d}max_valid_utts=10",
           f"{d}tokenizer={Path(a.data) / 'tokenizer' / 'en128.model'}", f"{d}num_workers={a.workers}",
           "--trainer.callbacks+=gpu_check.StepClock", "--trainer.enable_progress_bar=false",
           "--trainer.limit_val_batches=0", "--trainer.logger=false", f"--trainer.max_steps={a.steps}",
           "--trainer.max_time=null", "--model.init_args.loss_start_steps={rnnt: 0}", "--threads=1"]
    env = {**os.environ, CLOCK_ENV: str(clock),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])}
    peak, t0 = [0.0], time.time()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample():
        while p.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(p.pid))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out = p.communicate()[0]
    thread.join()
    if p.returncode != 0 or not clock.exists():
        raise SystemExit(f"speechkit fit ({train}) failed:\n{out[-3000:]}")
    r = json.loads(clock.read_text())
    t, utts = r["times"][10:], r["utts"][10:]
    return {"train": train, "peak_rss_mb": round(peak[0]), "steps": len(t) - 1,
            "utts_per_s": round(sum(utts[:-1]) / (t[-1] - t[0]), 1), "wall_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "locale"))
    ap.add_argument("--work", default="/tmp/shards-bench")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = Path(a.data) / "asr" / "train.jsonl"
    folders = {1: work / "x1", a.scale: work / f"x{a.scale}"}
    for scale, folder in folders.items():
        if not is_shards(folder):
            src = manifest if scale == 1 else scaled_manifest(manifest, work / f"train-x{scale}.jsonl", scale)
            t0 = time.time()
            write_shards(src, folder, workers=2)
            print(f"x{scale} shards written in {time.time() - t0:.0f}s", file=sys.stderr)
    out = {}
    for name, train in ((f"shards x{a.scale}", folders[a.scale]), ("shards x1", folders[1]),
                        ("in-memory cache x1", manifest)):
        out[name] = fit(str(train), work / name.replace(" ", "_"), a)
        print(f"{name:20s} {out[name]}", file=sys.stderr)
    x1, big, mem = out["shards x1"], out[f"shards x{a.scale}"], out["in-memory cache x1"]
    out["rss_ratio_scaled_over_x1"] = round(big["peak_rss_mb"] / x1["peak_rss_mb"], 3)
    out["throughput_shards_over_cache"] = round(x1["utts_per_s"] / mem["utts_per_s"], 3)
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
