"""Every ``fit`` stage of every stages file of every dataset recipe (its stages.yaml, and the experiments'
files beside it such as recipes/locale/lego.yaml) builds its model at full size (the corpus tests train
the same classes at toy sizes), and a parameter count a config states ("~19M parameters") is what
its own recipe builds from it, within 5% (another recipe may reuse it with other vocabulary sizes).

And each trains under plain DDP as it is (README "Past one machine"): DDP fails on a step that leaves a
trainable parameter out of the loss unless its unused-parameter search is on, which ``SpeechTask`` switches
on when its loss schedule needs it (``leaves_parameters_out``). So for each model, one step on a random
batch at step 0 and one once every loss term has started: the late step reaches every trainable
parameter, and if the first leaves some out, the task says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
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


def random_batch(cli, b: int = 2) -> dict:
    """A batch of what the data module reads (features, source tokens or target tokens; STAST's
    transcripts), random, for the model's vocabulary."""
    from speechkit.data.datamodule import LMDataModule, SpeechDataModule, TextDataModule

    dm, model = cli.datamodule, cli.model.model
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, model.vocab_size, (b, 6), generator=g)
    batch = {"targets": targets, "target_lens": torch.tensor([6, 4])}
    if isinstance(dm, SpeechDataModule):
        batch |= {"inputs": torch.randn(b, 160, dm.fbank.num_mel_bins, generator=g),
                  "input_lens": torch.tensor([160, 120])}
        if dm.transcript_tokenizer_path is not None:
            batch |= {"transcripts": torch.randint(0, dm.transcript_vocab_size, (b, 7), generator=g),
                      "transcript_lens": torch.tensor([7, 5])}
    elif isinstance(dm, TextDataModule):
        batch |= {"inputs": torch.randint(0, dm.source_vocab_size, (b, 8), generator=g),
                  "input_lens": torch.tensor([8, 6])}
    else:
        assert isinstance(dm, LMDataModule), type(dm)
        batch |= {"inputs": targets, "input_lens": batch["target_lens"]}
    return batch


@pytest.mark.parametrize("args", list(fit_stages()))
def test_recipe_model_trains_under_plain_ddp(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    configs = [Path(a.split("=", 1)[1]) for a in args if a.startswith("--config=")]
    mwer = any("MWERTask" in c.read_text() for c in configs)
    cli = run_lightning([*args, "--model.init_args.init_from=null", "--trainer.logger=false",
                         *(["--model.init_args.lm=null", "--model.init_args.lm_weight=0"] if mwer else [])],
                        run=False)
    task, batch = cli.model, random_batch(cli)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    late = max([0, *task.loss_start_steps.values()]) + max([1, *task.loss_ramp_steps.values()])
    early = set(task.left_out(batch, 0))
    # what the task decides DDP's search by (step 0) covers every later step
    assert set(task.left_out(batch, late)) <= early
    # a schedule that starts a term late leaves its parts out first (the demo recipe's predictor, joiner)
    if any(n > 0 for n in task.loss_start_steps.values()) and type(task.model).__name__ == "Transducer":
        assert any(n.startswith(("predictor.", "joiner.")) for n in early), sorted(early)
    after = task.state_dict()  # the probe ran on a copy
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.grad is not None for p in task.parameters())
