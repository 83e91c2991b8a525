"""Pictures of runs and results (``speechkit plot``, ``plot-stream``, ``plot-align``, ``tune-fusion --plot``):
PNG files drawn by matplotlib's Agg canvas (no display, no global pyplot state).

- ``plot_curves``: a ``fit`` run's training and validation curves (losses, WER/CER or BLEU/chrF, the
  learning rate) from its ``lightning_logs/version_*/metrics.csv`` (a resumed run's versions joined);
- ``plot_fusion``: WER over the (λ_LM, λ_ILM) grid of ``tune-fusion`` rows;
- ``plot_stream``: WER and per-chunk latency against the chunk size, from ``stream --manifest`` summaries;
- ``plot_alignment``: one utterance's spectrogram with the reference's and the hypothesis's word times.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..audio import read_audio
from ..data.manifest import load_manifest
from ..errors import SpeechkitError
from ..features import FbankConfig, fbank

CURVES = "curves.png"  # plot_curves' file in the run folder
RATE_CAP = 100.0  # error rates above this (an untrained transducer's WER can be 1,000%) are drawn at the top


class PlotError(SpeechkitError, ValueError):
    """Input a plot cannot be drawn from (the message names the file or folder)."""


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=100)
    return out


def metrics_files(run_dir: str | Path) -> list[Path]:
    """The ``metrics.csv`` files of a run folder in version order (a folder holding one itself: that one)."""
    run = Path(run_dir)
    if (run / "metrics.csv").is_file():
        return [run / "metrics.csv"]
    files = [p / "metrics.csv" for p in (run / "lightning_logs").glob("version_*")
             if (p / "metrics.csv").is_file()]
    if not files:
        raise PlotError(f"{run}: no lightning_logs/version_*/metrics.csv (the folder of a speechkit fit run, "
                        "its trainer.default_root_dir, has them)")
    return sorted(files, key=lambda p: int(p.parent.name[8:]) if p.parent.name[8:].isdigit() else -1)


def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged quantity of a run → its (step, value) points in step order; a step logged again by a
    resumed run keeps its latest value."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for path in metrics_files(run_dir):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = row.get("step")
                for key, value in row.items():
                    if key in ("epoch", "step") or value in ("", None) or step in ("", None):
                        continue
                    try:
                        series[key][int(float(step))] = float(value)
                    except ValueError:
                        raise PlotError(f"{path}: step {step}, {key}: not a number: {value!r}") from None
    if not series:
        raise PlotError(f"{run_dir}: its metrics.csv has no logged values yet")
    return {k: sorted(v.items()) for k, v in series.items()}


def _draw(ax, points, label: str, cap: float | None = None, **style) -> None:
    steps, values = zip(*points)
    if cap is not None and max(values) > cap:
        label += f" (> {cap:g} drawn at {cap:g})"
        values = [min(v, cap) for v in values]
    ax.plot(steps, values, label=label, marker="o" if len(points) < 40 else None, markersize=3, **style)


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss, error rate / translation score and learning rate of a ``fit`` run against the step →
    the PNG (default ``RUN_DIR/curves.png``). Panels appear for what the run logged."""
    m = read_metrics(run_dir)
    losses = [k for k in m if k.endswith("/loss")] or [k for k in m if k.startswith(("train/", "val/"))
                                                       and k.split("/")[1] in ("ctc", "rnnt", "ce", "ppl")]
    rates = [k for k in m if k.startswith("val/") and k.split("/")[1] in ("wer", "cer", "ctc_wer")]
    scores = [k for k in m if k.startswith("val/") and k.split("/")[1] in ("bleu", "chrf")]
    lrs = [k for k in m if k.endswith("/lr") or k.startswith("lr-")]
    panels = [(t, ks) for t, ks in (("loss", losses), ("error rate (%)", rates), ("score", scores),
                                    ("learning rate", lrs)) if ks]
    if not panels:
        raise PlotError(f"{run_dir}: no loss, WER/CER, BLEU/chrF or learning rate in its metrics "
                        f"(it has {', '.join(sorted(m))})")
    fig = Figure(figsize=(7, 2.2 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            _draw(ax, m[k], k, RATE_CAP if title.startswith("error") else None,
                  alpha=0.9 if k.startswith("val/") else 0.6)
        if title == "loss" and min(v for k in keys for _, v in m[k]) > 0:
            ax.set_yscale("log")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("step")
    fig.suptitle(f"{Path(run_dir).resolve().name}: training and validation", fontsize=10)
    fig.tight_layout()
    return _save(fig, out or Path(run_dir) / CURVES)


def plot_fusion(rows: list[dict], out: str | Path, title: str = "") -> Path:
    """``tune-fusion`` rows → a heatmap of WER over (λ_LM, λ_ILM), each cell the best length reward β's
    WER (its β written under the number when the grid has several)."""
    if not rows:
        raise PlotError(f"{out}: no tune-fusion rows to plot")
    best: dict[tuple[float, float], dict] = {}
    for r in rows:
        key = (r["lm_weight"], r["ilm_weight"])
        if key not in best or r["wer"] < best[key]["wer"]:
            best[key] = r
    lms, ilms = sorted({k[0] for k in best}), sorted({k[1] for k in best})
    betas = sorted({r["length_reward"] for r in rows})
    grid = torch.full((len(ilms), len(lms)), math.nan)
    for (lw, iw), r in best.items():
        grid[ilms.index(iw), lms.index(lw)] = r["wer"]
    fig = Figure(figsize=(1.1 * len(lms) + 2.5, 0.8 * len(ilms) + 1.8))
    ax = fig.subplots()
    im = ax.imshow(grid.numpy(), origin="lower", cmap="viridis_r", aspect="auto")
    fig.colorbar(im, ax=ax, label="WER (%)")
    low = float(grid.nan_to_num(math.inf).min())
    for (lw, iw), r in best.items():
        text = f"{r['wer']:.1f}" + (f"\nβ {r['length_reward']:g}" if len(betas) > 1 else "")
        ax.text(lms.index(lw), ilms.index(iw), text, ha="center", va="center", fontsize=8,
                fontweight="bold" if r["wer"] == low else "normal",
                color="white" if r["wer"] > (low + float(grid.nan_to_num(low).max())) / 2 else "black")
    ax.set_xticks(range(len(lms)), [f"{v:g}" for v in lms])
    ax.set_yticks(range(len(ilms)), [f"{v:g}" for v in ilms])
    ax.set_xlabel("λ_LM (--lm-weight)")
    ax.set_ylabel("λ_ILM (--ilm-weight)")
    beta = f"best of β ∈ {{{', '.join(f'{b:g}' for b in betas)}}}" if len(betas) > 1 else f"β = {betas[0]:g}"
    ax.set_title(f"{title + ': ' if title else ''}WER by fusion weights ({beta})", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def read_stream_results(paths: list[str | Path]) -> list[dict]:
    """The summaries of ``speechkit stream --manifest`` runs (what it prints: one JSON object per run) in
    ``paths``, files of one or more such lines (a recipe stage's ``stdout`` file); other lines are skipped.
    A file without any is an error naming it."""
    found = []
    for path in map(Path, paths):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise PlotError(f"{path}: {e.strerror}") from None
        mine = []
        for n, line in enumerate(lines, 1):
            if not line.lstrip().startswith("{"):
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlotError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if isinstance(d, dict) and "wer" in d and d.get("chunk_ms") is not None:
                mine.append(d)
        if not mine:
            raise PlotError(f"{path}: no `speechkit stream --manifest` summary in it (a JSON line with wer "
                            "and chunk_ms)")
        found += mine
    return found


def plot_stream(results: list[dict], out: str | Path) -> Path:
    """WER and latency against the chunk size, one line per (manifest, search settings without the chunk),
    from ``read_stream_results``. The latency drawn is the chunk plus the compute per chunk (mean, p95): how
    long after a word's last sample, at most, its result comes."""
    series: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        settings = "-".join(p for p in str(r.get("settings", "")).split("-") if not p.startswith("chunk"))
        series[f"{Path(r.get('manifest', '?')).stem} {settings}".strip()].append(r)
    fig = Figure(figsize=(9, 3.4))
    wer_ax, lat_ax = fig.subplots(1, 2)
    for label, rs in sorted(series.items()):
        rs.sort(key=lambda r: r["chunk_ms"])
        chunks = [r["chunk_ms"] for r in rs]
        line, = wer_ax.plot(chunks, [r["wer"] for r in rs], marker="o", label=label)
        for r in rs:
            wer_ax.annotate(f"{r['wer']:.1f}", (r["chunk_ms"], r["wer"]), textcoords="offset points",
                            xytext=(0, 5), ha="center", fontsize=7)
        lat_ax.plot(chunks, [r["chunk_ms"] + r["latency_ms_mean"] for r in rs], marker="o",
                    color=line.get_color(), label=f"{label}: mean compute")
        lat_ax.plot(chunks, [r["chunk_ms"] + r["latency_ms_p95"] for r in rs], marker="^", linestyle="--",
                    color=line.get_color(), label=f"{label}: p95 compute")
    for ax, what in ((wer_ax, "WER (%)"), (lat_ax, "chunk + compute per chunk (ms)")):
        ax.set_xscale("log", base=2)
        ticks = sorted({r["chunk_ms"] for r in results})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("chunk (ms of audio)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    wer_ax.set_title("accuracy", fontsize=9)
    lat_ax.set_title("latency: a word waits for its chunk's end, then the compute", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def plot_alignment(wave: torch.Tensor, ref_words: list, hyp_words: list[dict], out: str | Path,
                   title: str = "", sample_rate: int = 16000) -> Path:
    """One utterance: its log-mel spectrogram, and under it the reference's word spans (``ref_words``:
    [word, start_s, end_s], e.g. a manifest's ``words``) against the hypothesis's (``hyp_words``:
    {word, start, end}, e.g. ``stream --manifest`` output, its times as the streaming search reports them)."""
    feats = fbank(wave, FbankConfig(sample_rate=sample_rate))  # (T, F)
    seconds = wave.numel() / sample_rate
    fig = Figure(figsize=(max(6.0, 2.2 * seconds), 4.2))
    spec, words = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    spec.imshow(feats.T.numpy(), origin="lower", aspect="auto", cmap="magma",
                extent=(0, seconds, 0, feats.shape[1]))
    spec.set_ylabel("mel bin")
    spans = [(1, [(w, float(s), float(e)) for w, s, e in ref_words], "tab:blue"),  # reference: upper row
             (0, [(w["word"], float(w["start"]), float(w["end"])) for w in hyp_words], "tab:orange")]
    for row, items, color in spans:
        for word, start, end in items:
            for ax in (spec, words) if row == 1 else (words,):
                ax.axvline(start, color=color, linewidth=0.8, alpha=0.8)
            words.broken_barh([(start, max(end - start, 0.01))], (row + 0.1, 0.8), color=color, alpha=0.3)
            words.text(start + 0.01, row + 0.5, word, va="center", fontsize=8, clip_on=True)
    words.set_yticks([0.5, 1.5], ["hypothesis", "reference"])
    words.set_ylim(0, 2)
    words.set_xlim(0, seconds)
    words.set_xlabel("time (s)")
    spec.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def alignment_from_files(hyps: str | Path, manifest: str | Path, utt_id: str | None,
                         out: str | Path | None = None) -> Path:
    """``speechkit plot-align``: the utterance ``utt_id`` (default: the first) of a ``stream --manifest``
    hypotheses file, its audio from ``manifest`` → ``plot_alignment``'s PNG (default beside ``hyps``:
    ``HYPS_STEM-ID.png``)."""
    rows = []
    with open(hyps, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PlotError(f"{hyps}:{n}: invalid JSON ({e.msg})") from None
    row = next((r for r in rows if utt_id in (None, r.get("id"))), None)
    if row is None:
        raise PlotError(f"{hyps}: no utterance {utt_id!r}" if utt_id else f"{hyps}: empty")
    if "words" not in row or not row.get("ref_words"):
        raise PlotError(f"{hyps}: utterance {row.get('id')} has no word times (words, ref_words): a "
                        "`speechkit stream --manifest` output of a manifest with word times is needed")
    utt = next((u for u in load_manifest(manifest) if u.id == row["id"]), None)
    if utt is None:
        raise PlotError(f"{manifest}: no utterance {row['id']} (the one of {hyps})")
    wave = read_audio(utt.audio, utt.offset, utt.duration)
    out = out or Path(hyps).with_name(f"{Path(hyps).stem}-{row['id']}.png")
    return plot_alignment(wave, row["ref_words"], row["words"], out,
                          f"{row['id']}\nref: {row['ref']}\nhyp: {row['hyp']}")
