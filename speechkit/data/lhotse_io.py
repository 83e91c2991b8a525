"""Lhotse interop, through the lhotse library: Lhotse manifests read as speechkit utterances, and speechkit
utterances written as a Lhotse ``CutSet``.

Read (``records``; ``manifest.load_manifest`` calls it for any Lhotse file, so every verb and data module
takes one where it takes a manifest):

- a ``CutSet`` (``cuts*.jsonl[.gz]``, as icefall and NeMo's Lhotse loaders write them): one utterance per
  supervision of each cut, its offset and duration clipped to the cut;
- a ``SupervisionSet`` (``*supervisions*.jsonl[.gz]``) with its ``RecordingSet`` beside it, named as
  Lhotse recipes name it (``supervisions`` → ``recordings`` in the file name): one utterance per
  supervision.

Audio must lie in files (a recording source of type ``file``); Lhotse Shar (audio inside tar shards)
goes through ``speechkit shard SHAR_DIR --out DIR``, which reads its audio with lhotse
(``shar_records``, ``shar_waves``). The supervision's ``id``, ``text``, ``language`` and ``speaker``
become the utterance's; ``translation``, ``domain`` and ``words`` travel in its ``custom`` dict.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CUT_TYPES = ("MonoCut", "MultiCut", "MixedCut", "PaddingCut", "DataCut")
CUSTOM = ("translation", "domain", "words")  # speechkit fields kept in a supervision's custom dict


def _first_record(path: Path) -> dict | None:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return json.loads(line)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return None


def lhotse_kind(path: str | Path) -> str | None:
    """"cuts", "supervisions" or "recordings" when ``path`` is a Lhotse JSONL manifest (by its first
    record), else None (a speechkit manifest, or not JSON)."""
    path = Path(path)
    if path.is_dir():
        return "shar" if any(path.glob("cuts.*.jsonl*")) else None
    rec = _first_record(path)
    if not isinstance(rec, dict) or rec.get("kind") == "utterance":
        return None
    if rec.get("type") in CUT_TYPES:
        return "cuts"
    if "recording_id" in rec and "start" in rec:
        return "supervisions"
    if "sources" in rec and "sampling_rate" in rec:
        return "recordings"
    return None


def _cuts(path: Path, kind: str):
    from lhotse import CutSet, RecordingSet, SupervisionSet

    if kind == "cuts":
        return CutSet.from_file(path)
    if kind == "recordings":
        raise ValueError(f"{path}: a Lhotse RecordingSet has no transcripts; give its SupervisionSet")
    recordings = path.with_name(path.name.replace("supervisions", "recordings"))
    if recordings == path or not recordings.is_file():
        raise ValueError(f"{path}: a Lhotse SupervisionSet needs its RecordingSet beside it, named with "
                         f"'recordings' for 'supervisions' ({recordings.name} not found)")
    return CutSet.from_manifests(recordings=RecordingSet.from_file(recordings),
                                 supervisions=SupervisionSet.from_file(path))


def records(path: str | Path) -> Iterator[tuple[str, str, dict]]:
    """A Lhotse cuts or supervisions file → (where: "FILE cut N (ID)", "cut N", speechkit manifest record)
    per supervision; ``manifest.load_manifest`` checks the records as it checks its own lines."""
    path = Path(path)
    kind = lhotse_kind(path)
    if kind is None or kind == "shar":
        raise ValueError(f"{path}: not a Lhotse cuts or supervisions manifest")
    for n, cut in enumerate(_cuts(path, kind), 1):
        where = f"{path} cut {n} ({cut.id})"
        sources = cut.recording.sources if getattr(cut, "has_recording", False) else []
        if not sources or sources[0].type != "file":
            what = sources[0].type if sources else "no recording"
            raise ValueError(f"{where}: audio is {what!r}, not a file; write speechkit shards from it "
                             "with `speechkit shard` (it reads the audio through lhotse)")
        for sup in cut.supervisions:
            inside = max(sup.start, 0.0)  # (a supervision may stick out of its cut: clipped to it)
            duration = min(sup.duration + min(sup.start, 0.0), cut.duration - inside)
            yield where, f"cut {n}", _record(sup, kind="utterance", version=1, audio=sources[0].source,
                                             offset=cut.start + inside, duration=duration)


def _record(sup, **fields) -> dict:
    """A supervision → a speechkit manifest record: its id and text, ``fields``, its language and speaker
    (when set), and the speechkit fields kept in its custom dict."""
    custom = sup.custom or {}
    rec = {"id": sup.id, "text": sup.text, **fields,
           **{k: custom[k] for k in CUSTOM if custom.get(k) is not None}}
    for key, value in (("lang", sup.language), ("speaker", sup.speaker)):
        if value:
            rec[key] = value
    return rec


def _shar(path: Path, audio: bool):
    from lhotse import CutSet

    if not audio:  # the cut manifests only: no tar is opened
        return CutSet.from_shar(fields={"cuts": sorted(str(p) for p in path.glob("cuts.*.jsonl*"))})
    return CutSet.from_shar(in_dir=path)


def shar_records(path: str | Path) -> list[dict]:
    """A Lhotse Shar folder's supervisions as speechkit manifest records (no ``audio``: it lies in the
    tar shards; ``shar_waves`` reads it), in Shar order."""
    out = []
    for cut in _shar(Path(path), audio=False):
        for sup in cut.supervisions:
            out.append(_record(sup, duration=sup.duration))
    return out


def shar_waves(path: str | Path) -> Iterator[tuple[str, np.ndarray, int]]:
    """A Lhotse Shar folder's supervisions' audio, in ``shar_records`` order: (supervision id, mono
    waveform (N,), its sampling rate), read from the tar shards by lhotse."""
    for cut in _shar(Path(path), audio=True):
        wave = cut.load_audio()[0]  # (channels, samples) → the first channel
        for sup in cut.supervisions:
            a = max(int(round(sup.start * cut.sampling_rate)), 0)
            yield sup.id, wave[a:a + int(round(sup.duration * cut.sampling_rate))], cut.sampling_rate


def _recording_id(audio: str) -> str:
    return f"{Path(audio).stem}-{hashlib.sha1(audio.encode()).hexdigest()[:8]}"


def cutset(utts: list[dict]):
    """speechkit manifest records (``Utterance.__dict__``, audio paths absolute) → a Lhotse ``CutSet``: one
    ``MonoCut`` per utterance (id, offset, duration) over its file's ``Recording`` (read with
    ``Recording.from_file``), holding one supervision (id, text, language, speaker, custom)."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    recordings, cuts = {}, []
    for u in utts:
        if not u.get("audio"):
            raise ValueError(f"utterance {u['id']!r} has no audio: a Lhotse cut needs a recording")
        rec = recordings.get(u["audio"])
        if rec is None:
            rec = Recording.from_file(u["audio"], recording_id=_recording_id(u["audio"]))
            recordings[u["audio"]] = rec
        offset = u.get("offset") or 0.0
        duration = u.get("duration") or rec.duration - offset
        sup = SupervisionSegment(id=u["id"], recording_id=rec.id, start=0.0, duration=duration, channel=0,
                                 text=u["text"], language=u.get("lang"), speaker=u.get("speaker"),
                                 custom={k: u[k] for k in CUSTOM if u.get(k)} or None)
        cuts.append(MonoCut(id=u["id"], start=offset, duration=duration, channel=0, recording=rec,
                            supervisions=[sup]))
    return CutSet.from_cuts(cuts)


def write_cuts(utts: list[dict], out: str | Path) -> int:
    """``cutset(utts)`` written to ``out`` (``.jsonl.gz`` or ``.jsonl``; atomically) → the cut count."""
    from ..files import atomic_path

    if not str(out).endswith((".jsonl", ".jsonl.gz")):
        raise ValueError(f"{out}: a Lhotse CutSet file ends in .jsonl.gz or .jsonl")
    cuts = cutset(utts)
    with atomic_path(out) as tmp:
        final = tmp.with_name(tmp.name + (".jsonl.gz" if str(out).endswith(".gz") else ".jsonl"))
        cuts.to_file(final)  # (lhotse picks the format by the suffixes)
        final.replace(tmp)
    return len(cuts)
