"""Lightning callbacks: export the trained model as a shareable brick; compression schedule and SAD; the
thread count that trains fastest on a machine shared with other work."""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

from ..pipelines.bricks import save_brick


class ExportBrick(L.Callback):
    """At the end of fit, write ``model`` as a brick (safetensors + config + interface + tokenizer).

    Args:
        dirpath: target directory (default: ``<trainer.default_root_dir>/brick``).
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "brick")
        encoder = getattr(pl_module.model, "encoder", None)  # a language model has none
        interface = {"kind": type(pl_module.model).__name__, "input": dm.input_info(),
                     "input_kind": getattr(encoder, "input_kind", "fbank" if encoder else "none"),
                     "target_lang": dm.target_lang, "global_step": trainer.global_step}
        if encoder is not None:
            interface["length_ratio"] = length_ratio(encoder, dm.sets["train"])
        state = None
        if getattr(pl_module, "compress", None) is not None:  # fold masks and quantizers (compress.export)
            from ..compress.export import fold

            state, interface["compression"] = fold(pl_module.model, pl_module.compress)
            interface["compression"]["coverage"] = pl_module.coverage.counts()
            sched = [c for c in trainer.callbacks if isinstance(c, CompressionSchedule)]
            interface["compression"]["sad"] = sched[0].summary() if sched else {}
        tokenizers = {"target": dm.tokenizer, "source": dm.source_tokenizer,
                      "transcript": getattr(dm, "transcript_tokenizer", None)}
        save_brick(pl_module.model, out, interface, {k: t for k, t in tokenizers.items() if t}, state=state)
        print(f"brick written to {out}")


def length_ratio(encoder, dataset) -> dict[str, float]:
    """Encoder output frames (K) per target token (U) over a training set: 5th/50th/95th percentile and mean.

    Recorded in interface.json so that a decoder reused on another encoder can check (and
    a length controller can adjust) the ratio it was trained with.
    """
    frames = encoder.output_lengths(torch.tensor(dataset.lengths())).float()
    tokens = torch.tensor(dataset.target_lengths()).float()
    r = frames / tokens
    q = torch.quantile(r, torch.tensor([0.05, 0.5, 0.95]))
    return {"p5": round(float(q[0]), 3), "median": round(float(q[1]), 3), "p95": round(float(q[2]), 3),
            "mean": round(float(r.mean()), 3)}


def progress_text(metrics: dict) -> dict:
    """The progress bar's metrics as text: error rates as percentages with 2 decimals (``val/wer: 35.27%``),
    BLEU/chrF with 2, other numbers with 3 (no exponents); Lightning's ``v_num`` left out."""
    out = {}
    for name, v in metrics.items():
        if name == "v_num":
            continue
        if not isinstance(v, (int, float)):
            out[name] = v
        elif name.endswith(("wer", "cer")):
            out[name] = f"{v:.2f}%"
        elif name.endswith(("bleu", "chrf")):
            out[name] = f"{v:.2f}"
        else:
            out[name] = f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return out


def format_progress_bar(trainer: L.Trainer) -> None:
    """Show the metrics of ``trainer``'s progress bar (whichever Lightning chose) as ``progress_text``."""
    bar = trainer.progress_bar_callback
    if bar is not None:
        get = bar.get_metrics
        bar.get_metrics = lambda *args, **kwargs: progress_text(get(*args, **kwargs))


class CompressionSchedule(L.Callback):
    """The time line of a ``compress:`` section, and SAD logging (``SpeechTask`` adds it by itself).

    Before every training batch and validation, from ``trainer.global_step`` alone (so a resumed
    run continues where it was): N:M masks off during the dense warm-up (``sparsity.start_step``),
    frozen from ``sparsity.freeze_step``; fake quantization off until ``quant.start_step``, then
    noise tempering γ0·exp(−(t − start)/τ).

    SAD (sparse architecture divergence): every ``sad_every`` steps the masks are compared with
    the previous check: ``sad/<layer>`` (fraction of entries that flipped), ``sad/total_flips``
    and ``sad/total`` (fraction over all masks) are logged; ``sad/from_start`` compares with the
    masks at the first check after sparsity started.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.previous: dict[str, torch.Tensor] = {}
        self.first: dict[str, torch.Tensor] = {}
        self.flips = 0
        self.last: dict[str, float] = {}

    def summary(self) -> dict[str, float]:
        """Totals for the exported brick's interface.json: flips summed over checks, fraction from start."""
        return {k: v for k, v in self.last.items() if k in ("sad/total_flips", "sad/from_start")}

    def _apply(self, model, step: int) -> None:
        from ..compress.apply import set_state

        sp, q = self.cfg.sparsity, self.cfg.quant
        kw = {}
        if sp is not None:
            frozen = sp.freeze_step is not None and step >= sp.freeze_step
            kw.update(sparsity=step >= sp.start_step, frozen=frozen)
        if q is not None:
            on = step >= q.start_step
            decay = math.exp(-(step - q.start_step) / q.noise_decay_steps)
            noise = q.noise * decay if on and q.noise else 0.0
            kw.update(quant=on, noise=noise)
        set_state(model, **kw)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._apply(pl_module.model, trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._apply(pl_module.model, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sp, step = self.cfg.sparsity, trainer.global_step
        if sp is None or step < sp.start_step or step % self.cfg.sad_every:
            return
        masks = current_masks(pl_module.model)
        if not self.first:
            self.first = masks
        if self.previous:
            per_layer, flips = sad(self.previous, masks)
            self.flips += flips
            total = sum(m.numel() for m in masks.values())
            logs = {f"sad/{k}": v for k, v in per_layer.items()}
            logs.update({"sad/total": flips / total, "sad/total_flips": float(self.flips),
                         "sad/from_start": sad(self.first, masks)[1] / total})
            for logger in trainer.loggers:  # directly: SAD steps need not meet log_every_n_steps
                logger.log_metrics(logs, step=step)
            self.last = logs
        self.previous = masks

    def state_dict(self) -> dict:
        return {"previous": self.previous, "first": self.first, "flips": self.flips, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.previous, self.first, self.flips, self.last = (state["previous"], state["first"], state["flips"],
                                                            state["last"])


def current_masks(model) -> dict[str, torch.Tensor]:
    """A copy of every N:M mask of ``model``: {"module.weight": bool tensor}."""
    from ..compress.apply import compressors
    from ..compress.sparsity import NMSparse

    return {k: p.mask.detach().clone().cpu() for k, p in compressors(model, NMSparse).items()}


def sad(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
    """Sparse architecture divergence between two sets of masks → ({layer: flipped fraction}, flips)."""
    per_layer, total = {}, 0
    for k, m in after.items():
        flips = int((m != before[k]).sum())
        per_layer[k] = flips / m.numel()
        total += flips
    return per_layer, total


class AdaptiveThreads(L.Callback):
    """Keep torch's intra-op thread count at whatever trains fastest now (``speechkit fit --threads auto``).

    Every ``every`` training steps, ``probe`` steps are timed at each candidate count (1, half and all of
    ``max_threads``) and the fastest (median step time, the first step after a switch left out) is kept.
    On a busy machine fewer threads are much faster: intra-op threads wait for each other at every op, so
    one descheduled thread stalls them all. Measured on 2 cores beside a CPU-bound process
    (recipes/locale/RESULTS.md, "`speechkit demo` on a busy machine"): 120 demo steps took ~2.3× longer
    with 2 threads than with 1. On a quiet machine it settles on all of them, at the cost of the probes.
    """

    def __init__(self, max_threads: int, every: int = 250, probe: int = 6):
        self.candidates = sorted({1, max(1, max_threads // 2), max_threads})
        self.every, self.probe = every, probe
        self.best = max_threads
        self.plan: list[int] = []  # thread count per step of the probe under way
        self.times: dict[int, list[float]] = {}
        self.current, self._switched, self._t0 = max_threads, False, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.plan and len(self.candidates) > 1 and step % self.every == 0:
            self.plan = [n for n in self.candidates for _ in range(self.probe)]
            self.times = {n: [] for n in self.candidates}
        self.current = self.plan[0] if self.plan else self.best
        if torch.get_num_threads() != self.current:
            torch.set_num_threads(self.current)
            self._switched = True
        else:
            self._switched = False
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.plan:
            return
        if not self._switched:
            self.times[self.current].append(time.perf_counter() - self._t0)
        self.plan.pop(0)
        if not self.plan:
            med = {n: statistics.median(t) for n, t in self.times.items() if t}
            best = min(med, key=med.get)
            if best != self.best:
                steps = ", ".join(f"{n}: {1000 * t:.0f} ms" for n, t in sorted(med.items()))
                print(f"threads: {self.best} → {best} (median step time by thread count: {steps})",
                      file=sys.stderr)
            self.best = best
