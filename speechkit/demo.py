"""``speechkit demo``: the whole path on the built-in locale corpus, on a CPU, in ~15 minutes.

1. builds the locale corpus (espeak-ng speech of gettext messages; cached after the first run),
2. trains the small conformer transducer of ``recipes/locale/conf/demo.yaml`` through the
   same LightningCLI as ``speechkit fit`` (checkpoints, resumable, brick exported), its schedule
   following the time budget (``SpeechTask(time_schedule=True)``) and its thread count what is fastest
   on the machine as it is (``--threads auto``),
3. decodes the test split with the exported brick and prints WER/CER and examples.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "recipes" / "locale" / "conf" / "demo.yaml"


def _stage(n: int, text: str, t0: float) -> None:
    print(f"\n[{time.time() - t0:6.0f}s] == {n}/3 {text}", flush=True)


def run_demo(minutes: float | None = None, max_utts: int | None = None, out: str = "exp/demo",
             config: str | None = None, data: str = "data/locale") -> dict:
    """Run the demo; returns {'wer', 'cer', 'seconds'}.

    ``data`` must be where the config's manifests live (demo.yaml: data/locale).
    """
    from .corpora.locale import prepare_locale
    from .pipelines.decode import decode_manifest
    from .train.cli import run_lightning

    t0 = time.time()
    cfg = Path(config) if config else DEFAULT_CONFIG
    if not cfg.is_file():
        raise SystemExit(f"error: demo config not found: {cfg} (run from a clone of the speechkit repo)")
    _stage(1, f"locale corpus → {data}", t0)
    prepare_locale(data, max_utts=max_utts)

    _stage(2, f"training ({cfg})", t0)
    # A machine slower than planned or busy with other work (a laptop, a shared server): the thread count
    # follows what is fastest now, and the schedule follows the time budget, so fewer steps still go
    # through every phase (CTC alone, then the transducer; the LR decay).
    args = ["fit", "-c", str(cfg), f"--trainer.default_root_dir={out}", "--threads=auto",
            "--model.init_args.time_schedule=true"]
    if minutes:
        secs = int(minutes * 60)
        args.append(f"--trainer.max_time=00:{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}")
    if (Path(out) / "checkpoints" / "last.ckpt").is_file():
        print(f"resuming from {out}/checkpoints/last.ckpt", flush=True)
        args.append("--ckpt_path=last")
    run_lightning(args)

    _stage(3, "decoding the test split with the exported brick", t0)
    brick = Path(out) / "brick"
    res, er = decode_manifest(brick, Path(data) / "asr" / "test.jsonl")
    secs = time.time() - t0
    print("\nexamples (reference → hypothesis):")
    for r in random.Random(0).sample(res, min(8, len(res))):
        print(f"  REF: {r['ref']}\n  HYP: {r['hyp']}")
    print(f"\nlocale test ({len(res)} utterances, greedy search): {er}")
    print(f"demo finished in {secs / 60:.1f} min; brick: {brick}", flush=True)
    sys.stdout.flush()
    return {"wer": er.wer, "cer": er.cer, "seconds": secs}
