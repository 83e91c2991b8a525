"""Numbered, resumable recipe stages, the same for every dataset:
``speechkit run recipes/<dataset> [--stage A] [--stop-stage B] [--set NAME=VALUE ...]``.

A recipe folder holds ``stages.yaml``::

    vars:                        # defaults, overridden by --set NAME=VALUE; {recipe} is the folder;
                                 # a variable may use others ({data}/tokenizer/unigram{vocab}.model)
      data: data/librispeech
      exp: exp/librispeech
      corpus: null               # null: the user must --set it (the error says so)
    stages:
      - name: prepare            # a command, or a list of them (speechkit / python: this environment's)
        run: speechkit prepare librispeech --root {corpus} --out {data}
        creates: "{data}/train.jsonl"   # optional: done when this exists
      - name: train              # speechkit fit on configs of the recipe folder, resumed after a kill
        fit: [conf/transducer.yaml]
        root: "{exp}/transducer"
        args: --trainer.max_steps=1000  # optional extra arguments

A ``run`` stage is done when its ``creates`` path exists, or else when its marker
``{exp}/stages/NN-name.done`` holds the same command (a changed command runs again); a ``fit``
stage is done when ``ROOT/brick`` exists and otherwise resumes from ``ROOT/checkpoints/last.ckpt``.
``--force`` reruns the selected stages. Stages are chosen by number (1-based) or name.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import SpeechkitError
from .files import write_text

SPEECHKIT = (sys.executable, "-m", "speechkit.cli")  # the CLI of this environment, whatever PATH says
STAGE_KEYS = {"name", "run", "fit", "root", "args", "creates"}


class RecipeError(SpeechkitError, ValueError):
    """A recipe's stages.yaml or a --set/--stage option is wrong (the message names the file and key)."""


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    commands: tuple[tuple[str, ...], ...]  # argv lists, speechkit / python resolved to this environment
    done_path: Path  # exists → done (fit: the brick's weights; run: `creates` or the marker)
    marker: Path | None  # run stages without `creates`: the marker holding the command
    resume: Path | None = None  # fit stages: the checkpoint a killed run resumes from

    @property
    def command(self) -> str:
        return " && ".join(shlex.join(argv) for argv in self.commands)

    def done(self) -> bool:
        if not self.done_path.exists():
            return False
        return self.marker is None or self.marker.read_text().strip() == self.command


class _Vars(dict):
    def __init__(self, values: dict, where: str):
        super().__init__(values)
        self.where = where

    def __missing__(self, key):
        raise RecipeError(f"{self.where}: unknown variable {{{key}}} (known: {', '.join(sorted(self))})")

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if value is None:
            raise RecipeError(f"{self.where} needs {{{key}}}: set it with --set {key}=VALUE")
        return value


def load_stages(recipe: str | Path, overrides: dict[str, str] | None = None) -> list[Stage]:
    """The stages of ``recipe/stages.yaml`` with variables filled in (``overrides`` win)."""
    folder = Path(recipe)
    path = folder / "stages.yaml"
    if not path.is_file():
        raise RecipeError(f"{folder} is not a recipe: no stages.yaml in it")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - {"vars", "stages"}
    if unknown:
        raise RecipeError(f"{path}: unknown top-level key(s) {sorted(unknown)} (expected vars, stages)")
    values = {"recipe": str(folder), **(spec.get("vars") or {})}
    for key in overrides or {}:
        if key not in values:
            raise RecipeError(f"--set {key}: {path} has no variable {key!r} (known: "
                              f"{', '.join(sorted(values))})")
    values.update(overrides or {})
    values.setdefault("exp", f"exp/{folder.name}")
    for _ in range(len(values)):  # variables may use other variables: {data}/tokenizer/unigram{vocab}.model
        known = _Vars(values, f"{path} vars")
        filled = {k: v.format_map(known) if isinstance(v, str) and "{" in v else v for k, v in values.items()}
        if filled == values:
            break
        values = filled
    stages, names = [], set()
    for i, raw in enumerate(spec.get("stages") or [], 1):
        where = f"{path} stage {i}"
        if not isinstance(raw, dict) or "name" not in raw:
            raise RecipeError(f"{where}: a stage is a mapping with a name")
        bad = set(raw) - STAGE_KEYS
        if bad or ("run" in raw) == ("fit" in raw):
            raise RecipeError(f"{where} ({raw['name']}): needs exactly one of run / fit, and only the keys "
                              f"{sorted(STAGE_KEYS)}" + (f"; unknown: {sorted(bad)}" if bad else ""))
        if raw["name"] in names:
            raise RecipeError(f"{where}: the stage name {raw['name']!r} is used twice")
        names.add(raw["name"])
        stages.append(_stage(i, raw, folder, _Vars(values, f"{where} ({raw['name']})")))
    if not stages:
        raise RecipeError(f"{path}: no stages")
    return stages


def _stage(number: int, raw: dict, folder: Path, v: _Vars) -> Stage:
    fill = lambda s: str(s).format_map(v)  # noqa: E731
    extra = shlex.split(fill(raw.get("args", "")))
    marker = Path(fill("{exp}")) / "stages" / f"{number:02d}-{raw['name']}.done"
    if "fit" in raw:
        if "root" not in raw:
            raise RecipeError(f"{v.where}: a fit stage needs root (its default_root_dir)")
        root = Path(fill(raw["root"]))
        configs = [raw["fit"]] if isinstance(raw["fit"], str) else list(raw["fit"])
        argv = [*SPEECHKIT, "fit", *(f"--config={folder / fill(c)}" for c in configs),
                f"--trainer.default_root_dir={root}", *extra]
        return Stage(number, raw["name"], (tuple(argv),), root / "brick" / "weights.safetensors", None,
                     root / "checkpoints" / "last.ckpt")
    commands = []
    for cmd in [raw["run"]] if isinstance(raw["run"], str) else raw["run"]:
        argv = shlex.split(fill(cmd)) + extra
        if not argv:
            raise RecipeError(f"{v.where}: an empty command")
        if argv[0] == "speechkit":
            argv = [*SPEECHKIT, *argv[1:]]
        elif argv[0] in ("python", "python3"):
            argv = [sys.executable, *argv[1:]]
        commands.append(tuple(argv))
    creates = raw.get("creates")
    return Stage(number, raw["name"], tuple(commands), Path(fill(creates)) if creates else marker,
                 None if creates else marker)


def select(stages: list[Stage], first: str | None, last: str | None) -> list[Stage]:
    """The stages from ``first`` to ``last`` (numbers or names; default: all)."""
    def index(key: str | None, default: int) -> int:
        if key is None:
            return default
        for s in stages:
            if key in (str(s.number), s.name):
                return s.number
        raise RecipeError(f"no stage {key!r}; stages: " + ", ".join(f"{s.number} {s.name}" for s in stages))

    lo, hi = index(first, 1), index(last, len(stages))
    if lo > hi:
        raise RecipeError(f"--stage {first} comes after --stop-stage {last}")
    return stages[lo - 1: hi]


def in_process(argv: list[str]) -> int:
    """Run a command like ``subprocess.call``, but a ``speechkit`` command inside this process (no
    interpreter start and imports per command: much faster for short stages; a crash ends the run)."""
    if tuple(argv[: len(SPEECHKIT)]) != SPEECHKIT:
        return subprocess.call(argv)
    from .cli import main

    try:
        main(argv[len(SPEECHKIT):])
    except SystemExit as e:
        if e.code not in (None, 0):
            print(e.code if isinstance(e.code, str) else f"exit code {e.code}", file=sys.stderr)
            return e.code if isinstance(e.code, int) else 1
    except Exception:  # what a separate process would print before exiting with 1
        traceback.print_exc()
        return 1
    return 0


def run_stages(stages: list[Stage], force: bool = False, dry_run: bool = False, log=print,
               call=subprocess.call) -> None:
    """Run each stage that is not done (all with ``force``), in order; stop at the first failure.
    ``call`` runs one command (``subprocess.call``, or ``in_process``)."""
    for s in stages:
        if s.done() and not force:
            log(f"== stage {s.number} {s.name}: done, skipped (--force reruns it)")
            continue
        commands = [list(argv) for argv in s.commands]
        if s.resume is not None and s.resume.exists() and not force:
            commands[0].append("--ckpt_path=last")  # a killed fit resumes
        for argv in commands:
            log(f"== stage {s.number} {s.name}: {shlex.join(argv)}")
            rc = 0 if dry_run else call(argv)
            if rc != 0:
                raise SystemExit(f"error: stage {s.number} ({s.name}) failed with exit code {rc}; rerun "
                                 f"from it with --stage {s.number}")
        if s.marker is not None and not dry_run:
            s.marker.parent.mkdir(parents=True, exist_ok=True)
            write_text(s.marker, s.command + "\n")


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise RecipeError(f"--set {item!r}: expected NAME=VALUE")
        out[key] = value
    return out
