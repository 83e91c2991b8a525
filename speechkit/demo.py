"""``speechkit demo``: the whole path on the built-in locale corpus, on a CPU, in ~15 minutes.

It runs the stages of ``recipes/locale/demo.yaml`` through the recipe runner (``speechkit.recipe``), each
command a ``speechkit`` subprocess of this environment, as ``speechkit run recipes/locale/demo.yaml``
would:

1. ``prepare``: builds the locale corpus (espeak-ng speech of gettext messages; cached after the first run),
2. ``train``: trains the small conformer transducer of ``recipes/locale/conf/demo.yaml`` with ``speechkit
   fit`` (checkpoints; a killed run resumes from its last checkpoint; brick exported at the end), its
   schedule following the time budget (``SpeechTask(time_schedule=True)``) and its thread count what is
   fastest on the machine as it is (``--threads=auto``),
3. ``decode``: decodes the test split with the exported brick (greedy), 4. ``score``: WER/CER;

then prints examples and the result. Training is skipped once its brick exists; the other stages run
every time (the corpus build is cached; decoding takes seconds).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from .recipe import REPO

RECIPE = REPO / "recipes" / "locale"
STAGES = RECIPE / "demo.yaml"
DEFAULT_CONFIG = RECIPE / "conf" / "demo.yaml"


def demo_sets(minutes: float | None = None, max_utts: int | None = None, out: str = "exp/demo",
              config: str | None = None, data: str = "data/locale",
              threads: int | str = "auto") -> dict[str, str]:
    """The ``--set`` values of demo.yaml for the demo's options."""
    sets = {"out": str(out), "data": str(data), "threads": str(threads),
            "config": str(Path(config).resolve() if config else DEFAULT_CONFIG)}
    if max_utts:
        sets["prepare_args"] = f"--max-utts {int(max_utts)}"
    if minutes:
        secs = int(minutes * 60)
        sets["fit_args"] = f"--trainer.max_time=00:{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    return sets


def run_demo(minutes: float | None = None, max_utts: int | None = None, out: str = "exp/demo",
             config: str | None = None, data: str = "data/locale", call=None,
             threads: int | str = "auto") -> dict:
    """Run the demo; returns {'wer', 'cer', 'seconds'}.

    ``data`` must be where the config's manifests live (demo.yaml: data/locale). ``call`` runs one
    command (default: the runner's, a subprocess). ``threads``: training's ``--threads`` (a number, or
    "auto": re-chosen while training).
    """
    from .metrics import score
    from .recipe import load_stages, run_command, run_stages

    t0 = time.time()
    sets = demo_sets(minutes, max_utts, out, config, data, threads)
    if not Path(sets["config"]).is_file():
        raise SystemExit(f"error: demo config not found: {sets['config']} (run from a clone of the speechkit "
                         "repo)")
    if not STAGES.is_file():
        raise SystemExit(f"error: demo stages not found: {STAGES} (run from a clone of the speechkit repo)")
    stages = load_stages(STAGES, sets)
    codes = []

    def recorded(argv, **kw) -> int:
        codes.append((call or run_command)(argv, **kw))
        return codes[-1]

    for s in stages:
        print(f"\n[{time.time() - t0:6.0f}s] == {s.number}/{len(stages)} {s.name}", flush=True)
        fit = s.resume is not None
        if fit and s.resume.is_file() and not s.done():
            print(f"resuming from {s.resume}", flush=True)
        try:  # a fit stage resumes or is done; the others run every time, as the demo always did
            run_stages([s], force=not fit, call=recorded)
        except SystemExit:
            raise SystemExit(f"error: demo stage {s.number} ({s.name}) failed with exit code {codes[-1]}; "
                             "run `speechkit demo` again with the same options to resume") from None
    decode = next(s for s in stages if s.name == "decode").commands[0]
    hyps = Path(decode[decode.index("--out") + 1])
    res = [json.loads(line) for line in open(hyps, encoding="utf-8")]
    er = score([r["ref"] for r in res], [r["hyp"] for r in res])
    secs = time.time() - t0
    print("\nexamples (reference → hypothesis):")
    for r in random.Random(0).sample(res, min(8, len(res))):
        print(f"  REF: {r['ref']}\n  HYP: {r['hyp']}")
    print(f"\nlocale test ({len(res)} utterances, greedy search): {er}")
    print(f"demo finished in {secs / 60:.1f} min; brick: {Path(out) / 'brick'}", flush=True)
    sys.stdout.flush()
    return {"wer": er.wer, "cer": er.cer, "seconds": secs}
