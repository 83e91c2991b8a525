"""The GPU path measured in one unattended command (issue 22): ≤ 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py --catalogs DIR [--out DIR] [--device cuda] [--budget-s 470]
        [--train-steps N] [--configs C ...] [--cpu-utts 200] [--skip STAGE ...]

On the lent GPU machine (its own Python has torch, torchaudio, lightning, sentencepiece, sacrebleu,
safetensors; the rest is carried, DESIGN.md §9), from the repository root, with ``carry [".gpu"]``
after ``bash scripts/gpu_carry.sh`` here:

    bash scripts/gpu_env.sh && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py \\
        --catalogs /tmp/locale --out "$OUT"

Stages, in this order, each with its share of ``--budget-s`` (a stage that fails or runs out of time is
recorded as such and the next one runs):

1. ``corpus``: the locale corpus into ``--data`` (data/locale) from the catalogs folder (skipped when
   built).
2. ``train``: ``speechkit fit`` of the locale full model with the one-GPU preset
   (recipes/locale/conf/{demo,full,gpu}.yaml, ``--configs``) for ``--train-steps`` (default: the
   preset's), as a subprocess, with ``StepClock`` (below) added: steps/s and utterances/s over the
   training steps, and the GPU busy % (nvidia-smi, every 100 ms: mean and 10th percentile) from the
   tenth step to the last; the time the run took before its first step (feature caching) apart.
3. ``decode``: the trained brick on the test set on ``--device``, greedy and beam 4: RTFx (audio
   seconds / seconds) model-only (features ready on the device; encoder + search) and end to end
   (``decode_dataset``: audio, features, encoder, search, text), WER; then the first ``--cpu-utts``
   utterances on the CPU: WER and how many hypotheses are identical to the device's; on CUDA also
   ``speechkit bench --device cuda --cuda-graphs --ptq`` on 100 utterances (``deployed``: the per-layer
   kernel plan with every candidate's time and error, and the speed-up over the brick as loaded).
4. ``throughput``: ``benchmarks/training_throughput.py`` on the same configs for ``--throughput-steps``
   steps: speechkit's Lightning loop vs a plain torch loop of the same model and batches (ratio).
5. ``tests``: ``pytest -m gpu`` (the CUDA halves of the device-parametrised tests).
6. ``loss``: ``benchmarks/transducer_loss.py --device DEVICE --json --kinds LOSS_KINDS``: torchaudio's
   RNN-T loss against the pruned loss (PyTorch and Triton recursions) and the fused exact loss, fp32
   and bf16 joiners, at the benchmark's GPU shapes.
7. ``compression``: ``benchmarks/compression.py --device DEVICE --json`` (on CUDA: the d = 512 × 12
   encoder at batch 8 × 600 frames, bf16 eager against CUDA graphs and deployed + CUDA graphs, with its
   per-layer plan).

Writes ``OUT/gpu_check.json`` after every stage (a killed run keeps what it had), ``OUT/train.log``
and ``OUT/tests.log`` (their output), and prints one table at the end. Without CUDA it runs on the CPU
(``--device cpu``; the busy % is then left out), which is how it is tested here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [f"recipes/locale/conf/{c}.yaml" for c in ("demo", "full", "gpu")]
STAGES = ("corpus", "train", "decode", "throughput", "tests", "loss", "compression")
SHARE = {"corpus": 0.13, "train": 0.33, "decode": 0.10, "throughput": 0.14, "tests": 0.12, "loss": 0.12,
         "compression": 0.06}
LOSS_KINDS = ("torchaudio", "pruned", "pruned-triton", "fused")  # the loss stage's (sub-batched is slow)
CLOCK_ENV = "SPEECHKIT_STEP_CLOCK"  # where StepClock writes its record


class StepClock(L.Callback):
    """Training-step clock for ``speechkit fit``: the host time at the start of every training step and
    the utterances in it, with no device synchronisation (the host runs ahead until the device's queue
    is full, so over many steps the host's rate is the device's), one synchronisation after the last
    step; and the GPU's busy % sampled by ``nvidia-smi`` every 100 ms from the tenth step on. Writes
    JSON to ``$SPEECHKIT_STEP_CLOCK`` at the end of training."""

    def __init__(self):
        self.times: list[float] = []
        self.utts: list[int] = []
        self.smi = None
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())
        self.utts.append(int(batch["input_lens"].shape[0]))
        if len(self.times) == 10 and pl_module.device.type == "cuda":
            index = pl_module.device.index or 0
            self.smi = subprocess.Popen(["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu",
                                         "--format=csv,noheader,nounits", "-lms", "100"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # (under DDP the ranks step together: rank 0's clock is the run's)
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.times.append(time.perf_counter())
        busy = []
        if self.smi is not None:
            self.smi.terminate()
            busy = [float(x) for x in self.smi.communicate()[0].split() if x.replace(".", "").isdigit()]
        record = {"fit_start": self.fit_start, "times": self.times, "utts": self.utts, "busy": busy,
                  "device": str(pl_module.device)}
        Path(os.environ[CLOCK_ENV]).write_text(json.dumps(record))


def percentile(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return round(xs[min(int(q * len(xs)), len(xs) - 1)], 1) if xs else None


def run(cmd: list[str], timeout: float, log: Path | None = None, env: dict | None = None) -> tuple[int, str]:
    """A subprocess from the repository root → (exit status (124: out of time), its output)."""
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1),
                           env={**os.environ, **(env or {})})
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        out = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    if log is not None:
        log.write_text(" ".join(cmd) + "\n" + out)
    return rc, out


def tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------- stages
def stage_corpus(a, budget: float) -> dict:
    from speechkit.corpora.common import read_summary
    from speechkit.corpora.locale import prepare_locale

    out = Path(a.data)
    if (out / "prepare.json").exists():
        summary, built = read_summary(out), False
    else:
        if not a.catalogs:
            raise ValueError(f"{out} is not built and no --catalogs folder was given")
        summary, built = prepare_locale(out, locale_dir=a.catalogs, progress=False), True
    return {"built": built, "manifests": summary["manifests"]}


def stage_train(a, budget: float) -> dict:
    exp = Path(a.out) / "train"
    clock = Path(a.out) / "step_clock.json"
    clock.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "speechkit", "fit"]
    for c in a.configs:
        cmd += ["-c", c]
    cmd += ["--trainer.default_root_dir", str(exp), "--trainer.callbacks+=gpu_check.StepClock"]
    if a.train_steps:
        steps = str(a.train_steps)
        cmd += ["--trainer.max_steps", steps, "--model.init_args.total_steps", steps]
    if a.device == "cpu":
        cmd += ["--trainer.accelerator", "cpu"]
    env = {CLOCK_ENV: str(clock), "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT),
                                                                   os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    rc, out = run(cmd, budget, Path(a.out) / "train.log", env)
    wall = time.perf_counter() - t0
    if rc != 0 or not clock.exists():
        raise RuntimeError(f"speechkit fit exited with {rc}: {tail(out)}")
    r = json.loads(clock.read_text())
    a.brick = str(exp / "brick")  # the decode stage's
    t, utts = r["times"], r["utts"]
    train_s = t[-1] - t[0]
    busy = r["busy"]
    return {"steps": len(utts), "utts": sum(utts), "train_s": round(train_s, 1),
            "steps_per_s": round(len(utts) / train_s, 2), "utts_per_s": round(sum(utts) / train_s, 1),
            "before_first_step_s": round(t[0] - r["fit_start"], 1), "wall_s": round(wall, 1),
            "busy_mean": round(sum(busy) / len(busy), 1) if busy else None,
            "busy_p10": percentile(busy, 0.10), "busy_samples": len(busy), "device": r["device"],
            "brick": str(exp / "brick")}


@torch.no_grad()
def model_time(model, ds, beam: int, device: torch.device,
               max_frames: int | None = None) -> tuple[float, list]:
    """Encoder + search over ``ds``, its features already on ``device`` → (seconds, texts by index).
    ``max_frames`` per batch (None: 250,000 on a GPU, about the whole locale test set in two batches, where
    a search's cost is its loop count; 60,000 on the CPU, ``speechkit decode``'s default)."""
    max_frames = max_frames or (250_000 if device.type == "cuda" else 60_000)
    from speechkit.data.dataset import collate
    from speechkit.data.sampler import BucketBatchSampler
    from speechkit.search.dispatch import search

    batches = []
    for index in BucketBatchSampler(ds.lengths(), max_frames, shuffle=False):
        b = collate([ds[i] for i in index])
        batches.append((index, b["inputs"].to(device), b["input_lens"].to(device)))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    search(model, model(batches[0][1], batches[0][2]), beam)  # warm-up (kernels, allocator)
    sync()
    hyps: dict[int, str] = {}
    t0 = time.perf_counter()
    for index, x, n in batches:
        for i, nb in zip(index, search(model, model(x, n), beam)):
            hyps[i] = nb[0].tokens
    sync()
    return time.perf_counter() - t0, [ds.tok.decode(list(hyps[i])) for i in range(len(ds))]


def stage_decode(a, budget: float) -> dict:
    from speechkit.metrics import score
    from speechkit.pipelines.bricks import load_brick
    from speechkit.pipelines.decode import DecodeOptions, brick_manifest, decode_dataset

    brick = a.brick
    if not brick:
        raise ValueError("no brick: the train stage did not run (give --brick)")
    manifest = Path(a.data) / "asr" / "test.jsonl"
    device = torch.device(a.device)
    b = load_brick(brick, device)
    ds = brick_manifest(b, manifest)
    audio = sum(u.duration or 0.0 for u in ds.utts)
    out = {"utts": len(ds), "audio_s": round(audio, 1)}
    hyps = {}
    for name, beam in (("greedy", 1), ("beam4", 4)):
        secs, hyps[name] = model_time(b.module, ds, beam, device)
        t0 = time.perf_counter()
        res = decode_dataset(b.module, ds, DecodeOptions(beam=beam, progress=False, num_workers=a.workers))
        e2e = time.perf_counter() - t0
        same = sum(r["hyp"] == h for r, h in zip(res, hyps[name]))  # other batches: rounding may differ
        out[name] = {"model_s": round(secs, 3), "rtfx_model": round(audio / secs), "e2e_s": round(e2e, 3),
                     "rtfx_e2e": round(audio / e2e), "e2e_same_hyps": same,
                     "wer": round(100 * score(ds.refs, hyps[name]).wer, 2)}
    out["beam4_over_greedy"] = round(out["beam4"]["model_s"] / out["greedy"]["model_s"], 2)
    if device.type == "cuda":  # `speechkit bench --device cuda --cuda-graphs --ptq`: the per-layer plan
        from speechkit.pipelines.bench import bench

        r = bench(brick, manifest, max_utts=100, ptq=True, progress=False, device=device, cuda_graphs=True)
        out["deployed"] = {"speedup": r["speedup"], "encoder_speedup": r["encoder_speedup"],
                           "results": r["results"], "plan": r["plan"].splitlines()}
    if device.type != "cpu" and a.cpu_utts:
        cpu = load_brick(brick, "cpu")
        sub = brick_manifest(cpu, manifest, a.cpu_utts)
        for name, beam in (("greedy", 1), ("beam4", 4)):
            _, got = model_time(cpu.module, sub, beam, torch.device("cpu"))
            same = sum(x == y for x, y in zip(got, hyps[name]))
            device_wer = score(sub.refs, hyps[name][: len(sub)]).wer
            out[name]["cpu"] = {"utts": len(sub), "same_hyps": same,
                                "wer": round(100 * score(sub.refs, got).wer, 2),
                                "wer_device_same_utts": round(100 * device_wer, 2)}
    return out


def stage_tests(a, budget: float) -> dict:
    rc, out = run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], budget,
                  Path(a.out) / "tests.log")
    return {"rc": rc, "summary": tail(out, 1)}


def stage_throughput(a, budget: float) -> dict:
    cmd = [sys.executable, "benchmarks/training_throughput.py", "-c", *a.configs, "--steps",
           str(a.throughput_steps), "--minutes", str(round(budget / 2 / 60, 2)), "--threads", "4",
           "--test-utts", "200", "--out", str(Path(a.out) / "throughput"), "--json"]
    if a.device == "cpu":
        cpu = Path(a.out) / "cpu.yaml"
        cpu.write_text("trainer:\n  accelerator: cpu\n")
        cmd[3 + len(a.configs):3 + len(a.configs)] = [str(cpu)]
    rc, out = run(cmd, budget)
    if rc != 0:
        raise RuntimeError(f"training_throughput.py exited with {rc}: {tail(out)}")
    r = json.loads([line for line in out.splitlines() if line.startswith('{"configs"')][-1])
    loops = r["loops"]
    return {"loops": loops, "equal_work": r["equal_work"], "same_initial_weights": r["same_initial_weights"],
            "speechkit_over_plain": round(loops["plain"]["utt_per_s_training"]
                                          / loops["speechkit"]["utt_per_s_training"], 3)}


def stage_script(script: str, a, budget: float, *args: str) -> dict:
    """A benchmark script with ``--device DEVICE --json`` [args] → its JSON lines ({"rows": [...]} for
    several; a script out of time keeps the lines it printed)."""
    rc, out = run([sys.executable, f"benchmarks/{script}", "--device", a.device, "--json", *args], budget)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if rc != 0 and not rows:
        raise RuntimeError(f"{script} exited with {rc}: {tail(out)}")
    return {**(rows[0] if len(rows) == 1 else {"rows": rows}), **({"rc": rc} if rc else {})}


RUN = {"corpus": stage_corpus, "train": stage_train, "decode": stage_decode, "throughput": stage_throughput,
       "tests": stage_tests,
       "loss": lambda a, budget: stage_script("transducer_loss.py", a, budget, "--kinds", *LOSS_KINDS),
       "compression": lambda a, budget: stage_script("compression.py", a, budget)}


# ------------------------------------------------------------------------------------------------ report
def table(results: dict) -> str:
    rows = [("stage", "result")]
    for name in STAGES:
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append((name, f"FAILED after {r['seconds']} s: {r['error'].splitlines()[-1][:90]}"))
        elif name == "train":
            rows.append((name, f"{r['steps']} steps in {r['train_s']} s: {r['steps_per_s']} steps/s, "
                               f"{r['utts_per_s']} utt/s; GPU busy mean {r['busy_mean']}% "
                               f"p10 {r['busy_p10']}%; "
                               f"{r['before_first_step_s']} s before the first step"))
        elif name == "decode":
            for k in ("greedy", "beam4"):
                d = r[k]
                cpu = d.get("cpu")
                same = f"; CPU: {cpu['same_hyps']}/{cpu['utts']} same, WER {cpu['wer']}%" if cpu else ""
                rows.append((f"decode {k}", f"RTFx {d['rtfx_model']} model-only, {d['rtfx_e2e']} end to end, "
                                            f"WER {d['wer']}%{same}"))
            rows.append(("", f"beam 4 / greedy time: {r['beam4_over_greedy']}x ({r['utts']} utts, "
                             f"{r['audio_s']} s audio)"))
        elif name == "tests":
            rows.append((name, f"rc {r['rc']}: {r['summary']}"))
        elif name == "throughput":
            s, p = r["loops"]["speechkit"], r["loops"]["plain"]
            rows.append((name, f"speechkit {s['utt_per_s_training']} utt/s vs plain torch "
                               f"{p['utt_per_s_training']} utt/s: time ratio {r['speechkit_over_plain']}"))
        else:
            rows.append((name, f"done ({r['seconds']} s; in the JSON)"))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalogs", help="gettext catalogs folder (<lang>/LC_MESSAGES/*.mo) for the corpus")
    ap.add_argument("--out", default="exp/gpu_check")
    ap.add_argument("--data", default="data/locale", help="the locale corpus (the configs name its paths)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=470.0, help="the whole run's seconds, for all stages")
    ap.add_argument("--configs", nargs="+", default=CONFIGS, help="the fit's config layers")
    ap.add_argument("--train-steps", type=int, help="default: the configs' max_steps")
    ap.add_argument("--brick", help="decode this brick when the train stage is skipped")
    ap.add_argument("--throughput-steps", type=int, default=120, help="steps of each loop (throughput)")
    ap.add_argument("--cpu-utts", type=int, default=200, help="test utterances decoded on the CPU too")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="DataLoader workers of the end-to-end decode")
    ap.add_argument("--skip", nargs="*", default=[], choices=STAGES)
    a = ap.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict = {"machine": {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                                 "cpus": os.cpu_count(), "python": platform.python_version(),
                                 "torch": torch.__version__, "device": a.device}}
    for name in STAGES:
        if name in a.skip:
            continue
        left = a.budget_s - (time.perf_counter() - start)  # shared by the stages to come, by their SHARE
        budget = left * SHARE[name] / sum(SHARE[s] for s in STAGES[STAGES.index(name):] if s not in a.skip)
        t0 = time.perf_counter()
        print(f"[{time.perf_counter() - start:6.1f} s] {name} (up to {budget:.0f} s)", flush=True)
        try:
            r = RUN[name](a, budget)
        except Exception as e:  # recorded; the next stage runs
            r = {"error": f"{type(e).__name__}: {e}"}
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = r
        tmp = Path(a.out) / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(Path(a.out) / "gpu_check.json")
    results["total_s"] = round(time.perf_counter() - start, 1)
    (Path(a.out) / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"total {results['total_s']} s; {Path(a.out) / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
