"""Numbered, resumable recipe stages, the same for every dataset:
``speechkit run recipes/<dataset> [--stage A] [--stop-stage B] [--set NAME=VALUE ...]``.

A recipe folder holds ``stages.yaml``, and may hold more stages files beside it, one per experiment
(``speechkit run recipes/locale/lego.yaml``); each is read the same way, relative to its folder::

    vars:                        # defaults, overridden by --set NAME=VALUE; {recipe} is the folder;
                                 # a variable may use others ({data}/tokenizer/unigram{vocab}.model);
                                 # data/… and exp/… lie under the roots (files.rooted: --data-root)
      data: data/librispeech
      exp: exp/librispeech       # default: exp/FOLDER (stages.yaml), exp/FOLDER/STEM (STEM.yaml)
      corpus: null               # null: the user must --set it (the error says so)
      threads: "2"
    stages:
      - name: prepare            # a command, or a list of them (speechkit / python: this environment's)
        run: speechkit prepare librispeech --root {corpus} --out {data}
        creates: "{data}/train.jsonl"   # optional: done when this exists
      - name: train              # speechkit fit on configs of the recipe folder, resumed after a kill
        fit: [conf/transducer.yaml, "conf/extra_{lang}.yaml?"]  # `?`: only if it exists and is not
        root: "{exp}/transducer"                                #  listed already (an optional layer)
        args: --trainer.max_steps=1000 --threads {threads}      # optional extra arguments
      - name: decode             # the commands once per value (space-separated; nested in key order)
        foreach: {beam: "1 4"}
        run: speechkit decode {exp}/transducer/brick {data}/test.jsonl --beam {beam} --json
          --out {exp}/hyps/test_b{beam}.jsonl
        stdout: "{exp}/results/decode.jsonl"   # optional: the commands' output, kept in this file too

A ``run`` stage is done when its ``creates`` path exists, or else when its marker
``{exp}/stages/NN-name.done`` holds the same command (a changed command runs again) and its ``stdout``
file (if any) exists; a ``fit`` stage is done when ``ROOT/brick`` exists and otherwise resumes from
``ROOT/checkpoints/last.ckpt``. ``--force`` reruns the selected stages. Stages are chosen by number
(1-based) or name. A ``stdout`` file is written when its stage succeeds (whole, never a part).

Commands are argument lists (``shlex``), never a shell: no pipes or redirections; what a command
prints goes to the console and, with ``stdout:``, to that file. A ``python`` command's relative script
(``python benchmarks/…``) that the working directory lacks is the one in the recipe's repository (two
folders up).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import SpeechkitError
from .files import atomic_write, rooted, write_text

SPEECHKIT = (sys.executable, "-m", "speechkit.cli")  # the CLI of this environment, whatever PATH says
STAGE_KEYS = {"name", "run", "fit", "root", "args", "creates", "stdout", "foreach"}
RUN_ONLY = ("creates", "stdout", "foreach")  # keys of run stages (a fit stage has root instead)


class RecipeError(SpeechkitError, ValueError):
    """A recipe's stages file or a --set/--stage option is wrong (the message names the file and key)."""


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    commands: tuple[tuple[str, ...], ...]  # argv lists, speechkit / python resolved to this environment
    done_path: Path  # exists → done (fit: the brick's weights; run: `creates` or the marker)
    marker: Path | None  # run stages without `creates`: the marker holding the command
    resume: Path | None = None  # fit stages: the checkpoint a killed run resumes from
    stdout: Path | None = None  # run stages: the file that keeps what the commands print

    @property
    def command(self) -> str:
        """The commands as a stages file writes them (``speechkit``, ``python``), joined by ``&&``; shown
        by ``--list`` and kept in the marker."""
        text = " && ".join(shlex.join(display(argv)) for argv in self.commands)
        return text + (f"  [stdout → {self.stdout}]" if self.stdout else "")

    def done(self) -> bool:
        if not self.done_path.exists() or (self.stdout is not None and not self.stdout.exists()):
            return False
        return self.marker is None or self.marker.read_text().strip() == self.command


def display(argv) -> list[str]:
    """``argv`` with this environment's interpreter / CLI written as ``python`` / ``speechkit``."""
    argv = list(argv)
    if tuple(argv[: len(SPEECHKIT)]) == SPEECHKIT:
        return ["speechkit", *argv[len(SPEECHKIT):]]
    if argv and argv[0] == sys.executable:
        return ["python", *argv[1:]]
    return argv


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


def stages_file(recipe: str | Path) -> tuple[Path, Path]:
    """(the recipe folder, its stages file) of a folder (its ``stages.yaml``) or a stages file in one."""
    path = Path(recipe)
    if path.is_dir():
        if not (path / "stages.yaml").is_file():
            raise RecipeError(f"{path} is not a recipe: no stages.yaml in it")
        return path, path / "stages.yaml"
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.parent, path
    raise RecipeError(f"{path}: no such recipe folder or stages file (a folder with stages.yaml, or a "
                      "stages .yaml file in one)")


def load_stages(recipe: str | Path, overrides: dict[str, str] | None = None,
                fit_args: list[str] | tuple[str, ...] = ()) -> list[Stage]:
    """The stages of a recipe folder's ``stages.yaml``, or of a stages file in a recipe folder, with
    variables filled in (``overrides`` win); ``fit_args`` go at the end of every fit stage's command (e.g.
    ``--trainer.devices=8 --trainer.num_nodes=2 --trainer.strategy=ddp``: where a run trains, not what)."""
    folder, path = stages_file(recipe)
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or "stages" not in spec:
        raise RecipeError(f"{path} is not a stages file: no stages: key (a training config is run with "
                          "speechkit fit -c)")
    unknown = set(spec) - {"vars", "stages"}
    if unknown:
        raise RecipeError(f"{path}: unknown top-level key(s) {sorted(unknown)} (expected vars, stages)")
    values = {"recipe": str(folder), **(spec.get("vars") or {})}
    for key in overrides or {}:
        if key not in values:
            raise RecipeError(f"--set {key}: {path} has no variable {key!r} (known: "
                              f"{', '.join(sorted(values))})")
    values.update(overrides or {})
    values.setdefault("exp", f"exp/{folder.name}" if path.name == "stages.yaml"
                      else f"exp/{folder.name}/{path.stem}")
    values = {k: rooted(v) for k, v in values.items()}  # data/… and exp/… under the roots (--data-root)
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
        if "fit" in raw and set(raw) & set(RUN_ONLY):
            raise RecipeError(f"{where} ({raw['name']}): {sorted(set(raw) & set(RUN_ONLY))} belong to run "
                              "stages (a fit stage is done when ROOT/brick exists)")
        if raw["name"] in names:
            raise RecipeError(f"{where}: the stage name {raw['name']!r} is used twice")
        names.add(raw["name"])
        stages.append(_stage(i, raw, folder, _Vars(values, f"{where} ({raw['name']})"), tuple(fit_args)))
    if not stages:
        raise RecipeError(f"{path}: no stages")
    return stages


def _configs(raw, folder: Path, fill) -> list[Path]:
    """The fit stage's config files; an entry ending in ``?`` is an optional layer: left out when the file
    does not exist or is listed already (e.g. ``conf/extra_{lang}.yaml?``)."""
    out = []
    for c in [raw] if isinstance(raw, str) else list(raw):
        path = folder / fill(c).removesuffix("?")
        if str(c).endswith("?") and (not path.is_file() or path in out):
            continue
        out.append(path)
    return out


def _loops(raw, v: _Vars) -> list[dict[str, str]]:
    """The variable values of a ``foreach`` stage, one dict per repetition (first key outermost)."""
    if raw is None:
        return [{}]
    if not isinstance(raw, dict) or not raw:
        raise RecipeError(f"{v.where}: foreach is a mapping NAME: VALUES (space-separated or a list)")
    lists = []
    for key, values in raw.items():
        if key in v:
            raise RecipeError(f"{v.where}: foreach {key!r} would hide the variable {{{key}}}")
        items = str(values).format_map(v).split() if isinstance(values, str) else [str(x) for x in values]
        if not items:
            raise RecipeError(f"{v.where}: foreach {key!r} has no values")
        lists.append([(key, x) for x in items])
    return [dict(combo) for combo in itertools.product(*lists)]


def _stage(number: int, raw: dict, folder: Path, v: _Vars, fit_args: tuple[str, ...] = ()) -> Stage:
    fill = lambda s, w=v: str(s).format_map(w)  # noqa: E731
    extra = shlex.split(fill(raw.get("args", "")))
    marker = Path(fill("{exp}")) / "stages" / f"{number:02d}-{raw['name']}.done"
    if "fit" in raw:
        if "root" not in raw:
            raise RecipeError(f"{v.where}: a fit stage needs root (its default_root_dir)")
        root = Path(fill(raw["root"]))
        argv = [*SPEECHKIT, "fit", *(f"--config={c}" for c in _configs(raw["fit"], folder, fill)),
                f"--trainer.default_root_dir={root}", *extra, *fit_args]
        return Stage(number, raw["name"], (tuple(argv),), root / "brick" / "weights.safetensors", None,
                     root / "checkpoints" / "last.ckpt")
    commands = []
    for loop in _loops(raw.get("foreach"), v):
        w = _Vars(dict(v), v.where)
        w.update(loop)
        for cmd in [raw["run"]] if isinstance(raw["run"], str) else raw["run"]:
            argv = shlex.split(fill(cmd, w)) + extra
            if not argv:
                raise RecipeError(f"{v.where}: an empty command")
            if argv[0] == "speechkit":
                argv = [*SPEECHKIT, *argv[1:]]
            elif argv[0] in ("python", "python3"):
                argv = [sys.executable, *argv[1:]]
                script = folder.resolve().parent.parent / argv[1] if len(argv) > 1 else None
                if script is not None and not Path(argv[1]).is_file() and script.is_file():
                    argv[1] = str(script)  # benchmarks/…: the recipe's repository's, from any directory
            commands.append(tuple(argv))
    creates, stdout = raw.get("creates"), raw.get("stdout")
    return Stage(number, raw["name"], tuple(commands), Path(fill(creates)) if creates else marker,
                 None if creates else marker, stdout=Path(fill(stdout)) if stdout else None)


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


def run_command(argv: list[str], stdout=None) -> int:
    """Run one command (``subprocess.call``); with ``stdout`` (a text file), what it prints goes to the
    console and to that file, line by line."""
    if stdout is None:
        return subprocess.call(argv)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1) as p:
        for line in p.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            stdout.write(line)
    return p.returncode


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def in_process(main):
    """A ``call`` for ``run_stages`` that runs ``speechkit`` commands inside this process with ``main`` (the
    CLI's entry point, which the caller passes: this module does not import the CLI), anything else as a
    subprocess. No interpreter start and imports per command: much faster for short stages; a crash ends
    the run."""
    def call(argv: list[str], stdout=None) -> int:
        if tuple(argv[: len(SPEECHKIT)]) != SPEECHKIT:
            return run_command(argv, stdout)
        with contextlib.redirect_stdout(_Tee(sys.stdout, stdout) if stdout is not None else sys.stdout):
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

    return call


def run_stages(stages: list[Stage], force: bool = False, dry_run: bool = False, log=print,
               call=run_command) -> None:
    """Run each stage that is not done (all with ``force``), in order; stop at the first failure.
    ``call(argv)`` runs one command (``run_command``, ``subprocess.call``, or ``in_process(main)``); for a
    stage with ``stdout``, ``call(argv, stdout=FILE)``."""
    for s in stages:
        if s.done() and not force:
            log(f"== stage {s.number} {s.name}: done, skipped (--force reruns it)")
            continue
        commands = [list(argv) for argv in s.commands]
        if s.resume is not None and s.resume.exists() and not force:
            commands[0].append("--ckpt_path=last")  # a killed fit resumes
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(atomic_write(s.stdout)) if s.stdout and not dry_run else None
            for argv in commands:
                log(f"== stage {s.number} {s.name}: {shlex.join(display(argv))}")
                sys.stdout.flush()  # before what the command prints
                rc = 0 if dry_run else call(argv) if sink is None else call(argv, stdout=sink)
                if rc != 0:
                    raise SystemExit(f"error: stage {s.number} ({s.name}) failed with exit code {rc}; rerun "
                                     f"from it with --stage {s.number}")
        if s.stdout and not dry_run:
            log(f"== stage {s.number} {s.name}: its output → {s.stdout}")
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


REPO = Path(__file__).resolve().parent.parent  # a clone's root: recipes/ and modules/ beside speechkit/


def presets(root: Path = REPO) -> list[tuple[str, str]]:
    """The configs to start from, each with its one-line description (``describe``) → [(path relative to
    ``root``, description)]: the recipe configs (``recipes/*/conf/**/*.yaml``, layered with ``speechkit fit
    -c``) and the brick presets (``modules/**/*.yaml``)."""
    files = sorted(root.glob("recipes/*/conf/**/*.yaml")) + sorted(root.glob("modules/**/*.yaml"))
    return [(str(f.relative_to(root)), describe(f)) for f in files]


def describe(path: Path, width: int = 90) -> str:
    """A config's first sentence of its leading ``#`` comment, on one line (cut at ``width`` characters);
    "" when it has none."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(" ".join(lines).split())
    first = re.split(r"(?<!e\.g)\.(?:\s|$)", text, maxsplit=1)[0]
    return first if len(first) <= width else first[:width - 1] + "…"
