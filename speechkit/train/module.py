"""LightningModule for sequence models built from bricks (ASR, MT, ST, chains)."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from ..compress.apply import CompressConfig, compress_model
from ..errors import SpeechkitError
from ..files import write_text
from ..metrics import error_rates, score
from ..nn.brick import BrickError
from ..pipelines.bricks import load_brick
from ..search.dispatch import search
from ..search.transducer import ctc_greedy


class NonFiniteLoss(SpeechkitError):
    """Training diverged: a loss (or the weights) became NaN or infinite."""


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class SpeechTask(L.LightningModule):
    """Trains any model with ``loss(inputs, lengths, targets, target_lengths) → {'loss', ...}``
    whose ``forward`` returns ``Encoded`` and which offers ``encoded_loss(enc, targets, lengths)``.

    Validation and test report the losses, the greedy-search WER/CER and BLEU/chrF, and the
    greedy CTC WER of the (last) marginal head (``speechkit test -c CONFIG --ckpt_path …``
    scores ``data.test``).

    Args:
        model: the model brick (e.g. ``speechkit.models.transducer.Transducer``).
        lr: peak learning rate (AdamW); weight_decay: AdamW decay.
        warmup_steps: linear warm-up; total_steps: where the cosine reaches ``lr * final_lr_ratio``
            (None: ``trainer.estimated_stepping_batches``, or constant after warm-up when that
            is unknown, as under ``max_time``).
        loss_start_steps: per loss term, the training step from which it is used, e.g.
            ``{"rnnt": 1500}`` trains the encoder with CTC alone first (see recipes/locale/README.md).
        loss_ramp_steps: per loss term, over how many steps from its start its weight rises linearly
            from 0 to full, e.g. ``{"pruned": 1000}`` (the pruned RNN-T loss's warm-up).
        init_from: per submodule of ``model`` ("" = the whole model), a brick directory to
            copy weights from, optionally ``DIR#attr.path`` for a part of that brick, e.g.
            ``{"encoder": "exp/asr/brick#encoder"}``. Shapes must match exactly.
        freeze: submodules of ``model`` whose parameters are not trained (e.g. ``["encoder"]``).
        compress: N:M sparsity and/or quantization-aware training of every weight (the config's
            top-level ``compress:`` section; README.md "Compression"), applied after ``init_from``;
            its schedule and SAD logging run as a callback; ``fit`` prints its coverage one line per rule
            and writes every parameter's row to ``compress_coverage.txt`` beside the run's config.yaml.
        nonfinite_skips: how many batches in a row with a non-finite (NaN/inf) training loss are skipped
            (no update) before the run stops with ``NonFiniteLoss`` naming the step and the loss term:
            the run then exits non-zero, exports no brick, and the last good checkpoint stays (a
            checkpoint of non-finite weights is never written). Skipping needs the loss on the host
            every step; on a GPU with ``nonfinite_skips: 0`` (the default) the loss is watched on the
            device instead and read every ``trainer.log_every_n_steps`` steps (and before validation
            and checkpoints), so the host never waits for the device in between: the error then names
            the first non-finite step, found up to that many steps later.
        time_schedule: read the schedule's step numbers (``warmup_steps``, ``total_steps``,
            ``loss_start_steps``, ``loss_ramp_steps``) as shares of the run: step s comes at s/total_steps
            of ``trainer.max_time`` or at step s, whichever is first. So a run under a time budget on a
            machine slower than planned (a laptop, a busy server) still goes through every phase, and a
            faster one stops at ``total_steps`` as planned. Needs ``total_steps``; without
            ``trainer.max_time`` it is the step schedule. Under DDP rank 0's clock is broadcast.
    """

    def __init__(self, model: torch.nn.Module, lr: float = 2e-3, weight_decay: float = 1e-3,
                 warmup_steps: int = 500, total_steps: int | None = None, final_lr_ratio: float = 0.05,
                 loss_start_steps: dict[str, int] | None = None,
                 loss_ramp_steps: dict[str, int] | None = None,
                 init_from: dict[str, str] | None = None, freeze: list[str] | None = None,
                 compress: CompressConfig | None = None, nonfinite_skips: int = 0,
                 time_schedule: bool = False):
        super().__init__()
        self.model = model
        for name, src in (init_from or {}).items():
            load_part(model, name, src)
        for name in freeze or []:
            model.get_submodule(name).requires_grad_(False)
        self.compress = compress
        if compress is not None:
            self.coverage = compress_model(model, compress)
        self.loss_start_steps = dict(loss_start_steps or {})
        self.loss_ramp_steps = dict(loss_ramp_steps or {})
        bad = {k: n for k, n in self.loss_ramp_steps.items() if not (isinstance(n, int) and n > 0)}
        if bad:
            raise ValueError(f"loss_ramp_steps must be positive step counts, got {bad}")
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps, self.final_lr_ratio = warmup_steps, total_steps, final_lr_ratio
        self._val = ([], [], [])
        self.nonfinite_skips, self._nonfinite_run = nonfinite_skips, 0
        self._watch: dict[str, torch.Tensor] = {}  # per loss term, on the device: first non-finite step or -1
        if time_schedule and not total_steps:
            raise ValueError("time_schedule needs total_steps (the step count the schedule is written in)")
        self.time_schedule, self._schedule_step = time_schedule, 0

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer else None
        if dm is None or dm.tokenizer is None:
            return
        vocab = getattr(self.model, "vocab_size", None)
        if vocab is not None and vocab != dm.tokenizer.vocab_size:
            raise ValueError(f"model vocab_size={vocab} but the tokenizer {dm.tokenizer_path} has "
                             f"{dm.tokenizer.vocab_size} pieces: set the model's vocab_size keys to match")
        cmvn = getattr(getattr(self.model, "encoder", None), "cmvn", None)
        if stage == "fit" and cmvn is not None and not bool(cmvn.initialized):
            cmvn.set_stats(*dm.cmvn_stats())
        if stage == "fit":
            self._ddp_unused_parameters()
            if self.compress is not None and self.trainer.is_global_zero:
                self._report_coverage()

    def _report_coverage(self) -> None:
        """Print the compression coverage one line per rule; every parameter's row goes to a file beside the
        run's config.yaml (the logger's folder)."""
        path = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "compress_coverage.txt"
        write_text(path, self.coverage.to_text() + "\n")
        print(f"{self.coverage.summary()}\n  every parameter: {path}")

    def left_out(self, batch: dict, step: int = 0) -> list[str]:
        """The trainable parameters of ``model`` that the training loss at schedule ``step`` leaves out on
        ``batch`` (e.g. the predictor and joiner before ``loss_start_steps: {rnnt: …}``, or the parts of a
        term of weight 0). Found by a forward and backward pass on a copy of the model, so the model, its
        buffers (BatchNorm statistics, quantizer scales) and the random state stay as they were."""
        model = copy.deepcopy(self.model).train()
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            out = model.loss(batch["inputs"], batch["input_lens"], batch["targets"], batch["target_lens"],
                             scales=self.loss_scales(step), **_extras(batch))
            out["loss"].backward()
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]

    def _ddp_unused_parameters(self) -> None:
        """Under plain DDP, switch on its unused-parameter search when the first steps leave parameters out
        of the loss (``left_out`` at step 0 on the first two training utterances; loss terms only ever
        start, so no later step leaves out more), before Lightning wraps the model: so every recipe trains
        with ``--trainer.strategy ddp`` as it is. The search walks the autograd graph every step (~5% of a
        CPU step, benchmarks/RESULTS.md "DDP"), so it stays off otherwise; a strategy that sets
        ``find_unused_parameters`` itself is left as it is."""
        from lightning.pytorch.strategies import DDPStrategy

        from ..data.dataset import collate

        strategy = self.trainer.strategy if self._trainer is not None else None
        kwargs = getattr(strategy, "_ddp_kwargs", None)  # DDPStrategy(**kwargs) → DistributedDataParallel
        dm = self.trainer.datamodule if self._trainer is not None else None
        if (not isinstance(strategy, DDPStrategy) or kwargs is None or "find_unused_parameters" in kwargs
                or dm is None or "train" not in getattr(dm, "sets", {})):
            return
        ds = dm.sets["train"]
        left = self.left_out(collate([ds[i] for i in range(min(2, len(ds)))]))
        if left:
            kwargs["find_unused_parameters"] = True
            if self.trainer.is_global_zero:
                print(f"note: DDP searches for unused parameters: the first steps leave {len(left)} "
                      f"parameter(s) out of the loss (e.g. {', '.join(left[:2])}; loss_start_steps "
                      f"{self.loss_start_steps})", file=sys.stderr)

    def configure_callbacks(self):
        from .callbacks import CompressionSchedule

        return [CompressionSchedule(self.compress)] if self.compress is not None else []

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        q = self.compress.quant if self.compress is not None else None
        if q is None or not q.sam_rho or self.global_step < q.start_step:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        from ..compress.quant import squat_step

        squat_step(self.model, optimizer, optimizer_closure, q.sam_rho, self.global_step)

    def schedule_step(self) -> int:
        """The step the LR and loss schedules read: the training step, or with ``time_schedule`` the larger
        of it and the share of ``trainer.max_time`` spent, counted in ``total_steps``."""
        step = self.global_step
        timer = self._timer() if self.time_schedule else None
        if timer is None:
            return step
        elapsed = timer.time_elapsed()
        share = int(self.total_steps * elapsed / (elapsed + timer.time_remaining()))
        if self.trainer.world_size > 1:  # ranks' clocks differ: all follow rank 0
            share = self.trainer.strategy.broadcast(share, src=0)
        return max(step, share)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._schedule_step = self.schedule_step()  # once per step, for the losses and the LR

    def _timer(self) -> Timer | None:
        """Lightning's ``Timer`` of ``trainer.max_time`` (None without one)."""
        if self._trainer is None:
            return None
        timers = [t for t in self.trainer.callbacks
                  if isinstance(t, Timer) and t.time_remaining() is not None]
        return timers[0] if timers else None

    def loss_scales(self, step: int) -> dict[str, float]:
        """Per scheduled loss term its weight's scale at training ``step``: 0 before its start step, then
        rising linearly to 1 over its ramp steps (``loss_start_steps``, ``loss_ramp_steps``)."""
        scales = {}
        for k in self.loss_start_steps.keys() | self.loss_ramp_steps.keys():
            since, ramp = step - self.loss_start_steps.get(k, 0), self.loss_ramp_steps.get(k)
            scales[k] = 0.0 if since < 0 else min(1.0, (since + 1) / ramp) if ramp else 1.0
        return scales

    def training_step(self, batch, batch_idx):
        out = self.model.loss(batch["inputs"], batch["input_lens"], batch["targets"], batch["target_lens"],
                              scales=self.loss_scales(self._schedule_step), **_extras(batch))
        if self.device.type != "cpu" and not self.nonfinite_skips:
            self._watch_finite(out)
        elif not self._finite(out):
            return None  # Lightning skips the backward pass and the update
        b = batch["inputs"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=b)
        if self.global_step % self.trainer.log_every_n_steps == 0:  # a float becomes a device tensor:
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=b)  # a host wait
        return out["loss"]

    def _watch_finite(self, out: dict) -> None:
        """Record on the device, per loss term, the first step it was not finite (no host wait)."""
        for k, v in out.items():
            if torch.is_tensor(v) and v.numel() == 1:
                first = self._watch.get(k, torch.full((), -1, dtype=torch.long, device=self.device))
                self._watch[k] = torch.where((first < 0) & ~torch.isfinite(v.detach()).reshape(()),
                                             self.global_step, first)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._watch and (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.check_watch()

    def check_watch(self) -> None:
        """Raise ``NonFiniteLoss`` if the device saw a non-finite loss term since the start (one host
        wait for all the terms)."""
        if not self._watch:
            return
        firsts = torch.stack(list(self._watch.values()))
        if self._trainer is not None and self.trainer.world_size > 1:  # the earliest any rank saw (-1: none)
            firsts = -self.trainer.strategy.reduce((-firsts.float()).where(firsts >= 0, -math.inf),
                                                   reduce_op="max")
            firsts = firsts.nan_to_num(-1, posinf=-1).long()
        seen = {k: s for k, s in zip(self._watch, firsts.tolist()) if s >= 0}
        if not seen:
            return
        step = min(seen.values())
        term = min(seen, key=lambda k: (seen[k], k == "loss"))  # the term that broke, not the total
        raise NonFiniteLoss(f"step {step}: training loss term {term!r} is not finite (seen on the device, "
                            f"checked at step {self.global_step}); the run stopped and exported no brick; "
                            "the last good checkpoint stays. Lower the learning rate (model.init_args.lr) or "
                            "allow skips (model.init_args.nonfinite_skips: checked every step)")

    def on_validation_start(self) -> None:
        self.check_watch()

    def _finite(self, out: dict) -> bool:
        """Whether the loss terms are finite on every rank; after ``nonfinite_skips`` non-finite batches in
        a row, raise ``NonFiniteLoss`` naming the step and the first non-finite term."""
        bad = not bool(torch.isfinite(out["loss"].detach()))
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank skips or stops together
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self._nonfinite_run = 0
            return True
        self._nonfinite_run += 1
        terms = [k for k, v in out.items()
                 if k != "loss" and torch.is_tensor(v) and not bool(torch.isfinite(v).all())]
        term, value = (terms[0], out[terms[0]]) if terms else ("loss", out["loss"])
        what = f"step {self.global_step}: training loss term {term!r} is {float(value.detach())}"
        if self._nonfinite_run > self.nonfinite_skips:
            raise NonFiniteLoss(f"{what} ({self._nonfinite_run} batch(es) in a row); the run stopped and "
                                "exported no brick; the last good checkpoint stays. Lower the learning rate "
                                "(model.init_args.lr) or allow skips (model.init_args.nonfinite_skips)")
        print(f"warning: {what}: batch skipped ({self._nonfinite_run} of at most {self.nonfinite_skips} "
              "in a row)", file=sys.stderr)
        return False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to write a checkpoint of non-finite weights: the last good one stays."""
        self.check_watch()
        bad = [k for k, p in self.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad:
            raise NonFiniteLoss(f"step {self.global_step}: {len(bad)} parameter(s) are NaN or infinite "
                                f"({', '.join(bad[:3])}); no checkpoint written, the last good one stays. "
                                "Lower the learning rate (model.init_args.lr)")

    def _eval_step(self, batch, stage: str) -> None:
        enc = self.model(batch["inputs"], batch["input_lens"])  # once, for the losses and the search
        out = self.model.encoded_loss(enc, batch["targets"], batch["target_lens"], **_extras(batch))
        b = batch["inputs"].shape[0]
        self.log_dict({f"{stage}/{k}": v for k, v in out.items()}, batch_size=b, sync_dist=True)
        tok = self.trainer.datamodule.tokenizer
        refs, hyps, ctc_hyps = self._val
        refs.extend(tok.decode(t[:n].tolist()) for t, n in zip(batch["targets"], batch["target_lens"]))
        hyps.extend(tok.decode(list(nb[0].tokens)) for nb in search(self.model, enc))
        if enc.logits is not None:
            ctc_hyps.extend(tok.decode(h) for h in ctc_greedy(enc))

    def _eval_end(self, stage: str) -> None:
        refs, hyps, ctc_hyps = self._val
        # every rank evaluates the whole split (``ManifestDataModule`` shards training batches only), so
        # these are equal on all ranks and their mean (sync_dist) is each rank's value
        if refs:  # the progress bar shows BLEU/chrF for translation (MT, ST), WER/CER otherwise
            sc = score(refs, hyps)
            dm = self.trainer.datamodule if self._trainer is not None else None
            translation = getattr(dm, "target_lang", None) is not None
            self.log_dict({f"{stage}/wer": sc.wer * 100, f"{stage}/cer": sc.cer * 100},
                          prog_bar=not translation, sync_dist=True)
            self.log_dict({f"{stage}/bleu": sc.bleu, f"{stage}/chrf": sc.chrf}, prog_bar=translation,
                          sync_dist=True)
        if ctc_hyps:
            self.log(f"{stage}/ctc_wer", error_rates(refs, ctc_hyps).wer * 100, sync_dist=True)
        self._val = ([], [], [])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # frozen parts (freeze, an LM) stay out
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        total = self.total_steps
        if total is None:
            est = self.trainer.estimated_stepping_batches
            total = int(est) if est and math.isfinite(est) else 0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
            self._schedule_step if self.time_schedule else s, self.warmup_steps, total, self.final_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LanguageModelTask(SpeechTask):
    """Trains a ``speechkit.models.lm.LanguageModel`` on text (``speechkit.data.datamodule.LMDataModule``).

    Validation and test report the per-sentence loss and the token perplexity ``{stage}/ppl``
    (end of sentence counted as a token). Same arguments as ``SpeechTask``.
    """

    def _eval_step(self, batch, stage: str) -> None:
        b = batch["targets"].shape[0]
        nll = -self.model.score(batch["targets"], batch["target_lens"]).sum()
        self.log(f"{stage}/loss", nll / b, batch_size=b, sync_dist=True)
        self._val[0].append(nll.detach())
        self._val[1].append(batch["target_lens"].sum() + b)

    def _eval_end(self, stage: str) -> None:
        if self._val[0]:
            nll, tokens = self.all_gather(torch.stack(self._val[0]).sum()), \
                self.all_gather(torch.stack(self._val[1]).sum())
            self.log(f"{stage}/ppl", torch.exp(nll.sum() / tokens.sum()), prog_bar=True, rank_zero_only=True)
        self._val = ([], [], [])


def _extras(batch: dict) -> dict:
    """Batch entries beyond inputs/targets that a model's loss takes as keywords (STAST: transcripts)."""
    return {k: batch[k] for k in ("transcripts", "transcript_lens") if k in batch}


def load_part(model: torch.nn.Module, name: str, src: str) -> str:
    """Copy the weights of brick ``src`` (``DIR`` or ``DIR#attr.path``) into submodule ``name``; print and
    return one line saying what was loaded from where."""
    directory, _, attr = src.partition("#")
    brick = load_brick(directory).module
    part = brick.get_submodule(attr) if attr else brick
    target = model.get_submodule(name)
    state = part.state_dict()
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        raise BrickError(f"init_from {name or '<model>'!r} ← {src}: the parts do not match ({e})") from None
    line = (f"init_from: {name or 'the whole model'} ({type(target).__name__}) ← {attr or 'the whole brick'} "
            f"({type(part).__name__}) of {directory}: {len(state)} tensors, "
            f"{sum(p.numel() for p in part.parameters()):,} parameters")
    print(line)
    return line
