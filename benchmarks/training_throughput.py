"""speechkit's transducer training loop (``speechkit fit``: Lightning + ``SpeechTask``) vs a plain
torch + torchaudio loop training the same model on the same batches: utterances per second, where
the difference goes, and the test WER each reaches in the same wall time.

    python benchmarks/training_throughput.py [-c recipes/locale/conf/demo.yaml ...] [--minutes 10]
        [--steps N] [--threads 1] [--test-utts 0] [--out exp/throughput] [--plain-first] [--json]

On a GPU (a config with ``trainer.accelerator: gpu``, e.g. ``-c …/demo.yaml …/full.yaml …/gpu.yaml``) the
plain loop runs on the same device, batches copied from pinned memory, under bf16 autocast when the
config's precision is bf16-mixed; each loop's last step waits for the device before its time is read.

Both loops are built from the same config by the same ``LightningCLI`` parser (same seed, so the
same initial weights — checked and reported — and the same ``BucketBatchSampler`` batches in the
same order), then each trains for ``--minutes`` of wall time, one after the other in this process:

- **speechkit**: ``trainer.fit`` exactly as ``speechkit fit -c CONFIG`` runs it (the config's
  validation every ``val_check_interval`` steps, checkpoints, logging, progress bar), with a timing
  callback added;
- **plain**: ``for batch in loader``: encoder → ``F.ctc_loss`` on the marginal head, joiner on the
  full lattice → ``torchaudio.functional.rnnt_loss`` (from the config's RNN-T start step), the same
  weights, AdamW parameter groups, warm-up/cosine schedule and gradient clipping; no validation, no
  checkpoints, no logging.

Step time = the time between the starts of consecutive training steps (data loading included). The
report gives, per loop, the steps and utterances done, utterances per second over the whole wall
time and over training steps only (validation and checkpoint writing taken out), and the equal-work
comparison: the summed step time of the steps both loops ran (the same batches), split into the
CTC-only warm-up and the RNN-T phase. Then both final models are scored on the test set (greedy
search, the same code). Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from speechkit.metrics import score
from speechkit.search.dispatch import search
from speechkit.train.cli import SpeechkitCLI
from speechkit.train.module import warmup_cosine


class StepTimer(L.Callback):
    """Timestamps of every training step's start, and the time spent in validation and checkpointing
    (in total, and so far at each step's start)."""

    def __init__(self):
        self.starts, self.utts, self.aside, self.validation, self.checkpoint = [], [], [], 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.starts.append(time.perf_counter())
        self.utts.append(batch["inputs"].shape[0])
        self.aside.append(self.validation + self.checkpoint)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps and module.device.type == "cuda":
            torch.cuda.synchronize(module.device)  # the last step: wait for the device's queue
        self.last_end = (time.perf_counter(), self.validation, self.checkpoint)  # before its checkpoint

    def on_validation_start(self, trainer, module):
        self._val = time.perf_counter()

    def on_validation_end(self, trainer, module):
        self.validation += time.perf_counter() - self._val


class TimedCheckpointIO(L.pytorch.plugins.TorchCheckpointIO):
    """Lightning's checkpoint writer, timed."""

    def __init__(self, timer: StepTimer):
        super().__init__()
        self.timer = timer

    def save_checkpoint(self, *args, **kwargs):
        t0 = time.perf_counter()
        super().save_checkpoint(*args, **kwargs)
        self.timer.checkpoint += time.perf_counter() - t0


def build(configs: list[str], root: str, minutes: float, threads: int,
          steps: int | None = None) -> SpeechkitCLI:
    """The task, model and data of ``configs`` as ``speechkit fit`` builds them, not run."""
    sec = round(60 * minutes)
    limit = f"00:{sec // 3600:02d}:{sec % 3600 // 60:02d}:{sec % 60:02d}"
    args = [a for c in configs for a in ("-c", c)] + [
        f"--trainer.default_root_dir={root}", f"--trainer.max_time={limit}", f"--threads={threads}",
        "--trainer.enable_progress_bar=false"] + ([f"--trainer.max_steps={steps}"] if steps else [])
    return SpeechkitCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                        subclass_mode_data=True, save_config_kwargs={"overwrite": True}, args=args, run=False,
                        trainer_defaults={"use_distributed_sampler": False})


def plain_loss(model, batch: dict, rnnt: bool) -> torch.Tensor:
    """The transducer's training loss written with torch and torchaudio directly: CTC on the marginal
    head, plus (``rnnt``) torchaudio's RNN-T loss on the joiner's full lattice; per utterance."""
    x, xl, y, yl = batch["inputs"], batch["input_lens"], batch["targets"], batch["target_lens"]
    b, blank = y.shape[0], model.blank
    enc = model.encoder(x, xl)  # hidden (B, T, D), marginal logits (B, T, V+1)
    logp = enc.logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V+1)
    loss = model.ctc_weight * F.ctc_loss(logp, y, enc.lengths, yl, blank=blank, reduction="sum",
                                         zero_infinity=True) / b
    if rnnt:
        logits = model.joiner(enc.hidden[:, :, None], model.predictor(y)[:, None])  # (B, T, U+1, V+1)
        loss = loss + model.rnnt_weight * AF.rnnt_loss(logits.float(), y.int(), enc.lengths.int(), yl.int(),
                                                       blank=blank, reduction="sum") / b
    return loss


def plain_loop(task, dm, seconds: float, max_steps: int, clip: float, device: torch.device,
               bf16: bool = False) -> dict:
    """Train ``task.model`` (a Transducer) with plain torch + torchaudio for ``seconds`` on ``device``
    (``bf16``: under bf16 autocast, as Lightning's bf16-mixed precision runs it)."""
    model = task.model.train()
    dm.setup("fit")
    cmvn = model.encoder.cmvn
    if cmvn is not None and not bool(cmvn.initialized):
        cmvn.set_stats(*dm.cmvn_stats())
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": task.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=task.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, task.warmup_steps, task.total_steps, task.final_lr_ratio))
    rnnt_start = task.loss_start_steps.get("rnnt", 0)
    loader, starts, utts, step, epoch = dm.train_dataloader(), [], [], 0, 0
    t0 = time.perf_counter()
    while step < max_steps and time.perf_counter() - t0 < seconds:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            starts.append(time.perf_counter())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = plain_loss(model, batch, rnnt=step >= rnnt_start)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            utts.append(batch["targets"].shape[0])
            step += 1
            if step >= max_steps or time.perf_counter() - t0 >= seconds:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    starts.append(time.perf_counter())
    return {"starts": starts, "utts": utts, "aside": [0.0] * len(starts), "setup": 0.0, "validation": 0.0,
            "checkpoint": 0.0}


def lightning_loop(cli: SpeechkitCLI) -> dict:
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.strategy.checkpoint_io = TimedCheckpointIO(timer)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    end, val, ckpt = timer.last_end  # the last step's end: not the final validation, the brick export
    return {"starts": timer.starts + [end], "utts": timer.utts, "aside": timer.aside + [val + ckpt],
            "setup": timer.starts[0] - t0, "validation": val, "checkpoint": ckpt}


@torch.no_grad()
def test_wer(model, dm, max_utts: int) -> tuple[float, int]:
    """Greedy-search WER (%) on the config's test set (its first ``max_utts`` batches' worth; 0: all)."""
    model.eval()
    dm.setup("test")
    refs, hyps, tok = [], [], dm.tokenizer
    device = next(model.parameters()).device
    for batch in dm.test_dataloader():
        enc = model(batch["inputs"].to(device), batch["input_lens"].to(device))
        refs.extend(tok.decode(t[:n].tolist()) for t, n in zip(batch["targets"], batch["target_lens"]))
        hyps.extend(tok.decode(list(nb[0].tokens)) for nb in search(model, enc))
        if max_utts and len(refs) >= max_utts:
            break
    return score(refs, hyps).wer * 100, len(refs)


def summary(run: dict, rnnt_start: int) -> tuple[dict, list[float], list[float]]:
    """The loop's report row, and its per-step times with and without validation/checkpoint writing."""
    starts, aside = run["starts"], run["aside"]
    dur = [b - a for a, b in zip(starts, starts[1:])]
    net = [d - (b - a) for d, a, b in zip(dur, aside, aside[1:])]
    wall, utts = starts[-1] - starts[0], sum(run["utts"])
    return {"steps": len(run["utts"]), "utts": utts, "setup_s": round(run["setup"], 1),
            "wall_s": round(wall, 1), "validation_s": round(run["validation"], 1),
            "checkpoint_s": round(run["checkpoint"], 1),
            "utt_per_s": round(utts / wall, 2), "utt_per_s_training": round(utts / sum(net), 2),
            "median_step_ms_ctc": round(1000 * statistics.median(net[:rnnt_start] or [0]), 1),
            "median_step_ms_rnnt": round(1000 * statistics.median(net[rnnt_start:] or [0]), 1)}, dur, net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", nargs="+", default=["recipes/locale/conf/demo.yaml"])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall time of each loop")
    ap.add_argument("--steps", type=int, default=None, help="at most this many steps per loop (default: "
                    "the config's max_steps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test-utts", type=int, default=0, help="test utterances to score (0: all)")
    ap.add_argument("--out", default="exp/throughput", help="the speechkit loop's default_root_dir")
    ap.add_argument("--plain-first", action="store_true", help="run the plain loop first (order check)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seconds = 60 * a.minutes
    ours, ref = (build(a.config, a.out + tag, a.minutes, a.threads, a.steps) for tag in ("", "_plain"))
    same = all(torch.equal(p, q) for p, q in zip(ours.model.model.state_dict().values(),
                                                  ref.model.model.state_dict().values()))
    task = ref.model
    rnnt_start = task.loss_start_steps.get("rnnt", 0)
    clip = ref.trainer.gradient_clip_val or float("inf")
    rows, durs, nets = {}, {}, {}
    device, bf16 = ref.trainer.strategy.root_device, "bf16" in str(ref.trainer.precision)
    loops = {"speechkit": lambda: lightning_loop(ours),
             "plain": lambda: plain_loop(task, ref.datamodule, seconds, ref.trainer.max_steps, clip, device,
                                         bf16)}
    for name in sorted(loops, reverse=not a.plain_first):  # speechkit first unless --plain-first
        run = loops[name]
        print(f"training: {name} loop, {a.minutes:g} min ...", flush=True)
        res = run()
        model = (ours if name == "speechkit" else ref).model.model
        rows[name], durs[name], nets[name] = summary(res, rnnt_start)
        wer, n = test_wer(model, ref.datamodule, a.test_utts)
        rows[name].update(test_wer=round(wer, 2), test_utts=n)
    common = min(len(d) for d in durs.values())
    eq = {}
    for phase, sl in (("ctc", slice(0, min(rnnt_start, common))), ("rnnt", slice(rnnt_start, common))):
        tot = {"speechkit_all": sum(durs["speechkit"][sl]), "speechkit": sum(nets["speechkit"][sl]),
               "plain": sum(nets["plain"][sl])}
        eq[phase] = {"steps": len(nets["plain"][sl]), **{f"{n}_s": round(v, 1) for n, v in tot.items()},
                     "ratio": round(tot["speechkit"] / max(tot["plain"], 1e-9), 3),
                     "ratio_all": round(tot["speechkit_all"] / max(tot["plain"], 1e-9), 3)}
    report = {"configs": a.config, "minutes": a.minutes, "threads": a.threads, "device": str(device),
              "precision": str(ref.trainer.precision), "same_initial_weights": same,
              "first": "plain" if a.plain_first else "speechkit",
              "loops": rows, "equal_work": eq}
    if a.json:
        print(json.dumps(report))
    else:
        print(f"same initial weights: {same}")
        for n, r in rows.items():
            print(f"{n:10s} " + "  ".join(f"{k}={v}" for k, v in r.items()))
        for phase, e in eq.items():
            print(f"equal work, {phase} phase: " + "  ".join(f"{k}={v}" for k, v in e.items()))


if __name__ == "__main__":
    main()
