"""Every ``fit`` stage of every stages file of every dataset recipe (its stages.yaml, and the experiments'
files beside it such as recipes/locale/lego.yaml) builds its model at full size (the corpus tests train
the same classes at toy sizes), and a parameter count a config states ("~19M parameters") is what
its own recipe builds from it, within 5% (another recipe may reuse it with other vocabulary sizes)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from speechkit.recipe import SPEECHKIT, load_stages
from speechkit.train.cli import run_lightning

pytestmark = pytest.mark.slow  # end to end (pytest.ini: the slow tier)

ROOT = Path(__file__).resolve().parents[2]
# every stages file: a recipe's stages.yaml and the experiments' beside it (recipes/locale/lego.yaml, …)
STAGES_FILES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml")
                      if isinstance(spec := yaml.safe_load(p.read_text()), dict) and "stages" in spec)
NEEDS = {"corpus": "/data/x", "lang": "de", "src": "fr"}  # the variables a user must --set
STATED = re.compile(r"~(\d+(?:\.\d+)?)M parameters")


def fit_stages():
    for path in STAGES_FILES:
        declared = yaml.safe_load(path.read_text()).get("vars") or {}
        needs = {k: v for k, v in NEEDS.items() if k in declared and declared[k] is None}
        recipe = path.parent.name if path.name == "stages.yaml" else f"{path.parent.name}/{path.stem}"
        for stage in load_stages(path, needs):
            argv, fit = stage.commands[0], (*SPEECHKIT, "fit")
            if argv[:len(fit)] == fit:
                yield pytest.param(list(argv[len(fit):]), id=f"{recipe}-{stage.name}")


@pytest.mark.parametrize("args", list(fit_stages()))
def test_recipe_model_builds_at_full_size(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["speechkit"])  # LightningCLI warns when pytest's argv is there too
    # warm starts (init_from) name bricks of earlier stages, which do not exist here; so does MWER's LM
    configs = [Path(a.split("=", 1)[1]) for a in args if a.startswith("--config=")]
    mwer = any("MWERTask" in c.read_text() for c in configs)
    args = [*args, "--model.init_args.init_from=null", "--trainer.logger=false",
            *(["--model.init_args.lm=null", "--model.init_args.lm_weight=0"] if mwer else [])]
    cli = run_lightning(args, run=False)
    n = sum(p.numel() for p in cli.model.parameters())
    assert n > 0
    last = Path([a for a in args if a.startswith("--config=")][-1].split("=", 1)[1])
    stated = STATED.search(last.read_text())
    if stated and ".." not in last.parts:
        assert abs(n / 1e6 / float(stated[1]) - 1) < 0.05, f"{last} says ~{stated[1]}M, builds {n / 1e6:.2f}M"
