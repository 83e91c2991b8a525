"""Every training of the locale recipe's stages files parses: keys, types and class paths are checked by
LightningCLI (``--print_config`` stops before anything is built), so a renamed argument fails here rather
than an hour into a run. And the recipe is configs + stages only: no scripts."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest
import yaml

from speechkit.recipe import SPEECHKIT, load_stages
from speechkit.train.cli import run_lightning

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "locale"
STAGES_FILES = sorted(RECIPE.glob("*.yaml"))  # stages.yaml, demo.yaml and one per experiment
VARIANTS = {"stast": [{"lang": "de"}, {"lang": "ro"}]}  # stages files run with other --set values too


def recipe_models() -> list[tuple[str, list[str]]]:
    """(name, the `speechkit fit` arguments) for every fit stage of every stages file: "FILE STAGE", or
    "FILE LANG STAGE" for stast.yaml's languages; and the full-size run of the README ("full")."""
    models = [("full", [f"--config={RECIPE}/conf/demo.yaml", f"--config={RECIPE}/conf/full.yaml"])]  # README
    for path in STAGES_FILES:
        for sets in VARIANTS.get(path.stem, [{}]):
            for stage in load_stages(path, sets):
                argv, fit = stage.commands[0], (*SPEECHKIT, "fit")
                if argv[:len(fit)] == fit:
                    name = " ".join([path.stem, *sets.values(), stage.name])
                    models.append((name, list(argv[len(fit):])))
    return models


MODELS = recipe_models()


def configs(args: list[str]) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def test_the_stages_files_list_their_models():
    names = {n for n, _ in MODELS}
    assert {"stages train", "demo train", "lego mt_ro_en", "lego chain", "lego finetune_ro_de",
            "stast de stast_mt_init", "stast ro e2e_mt_init", "stast ro mt", "fusion lm_lstm",
            "fusion mwer_ilme", "fusion ilmt_lstm", "compress sparse_int8", "compress mt_sparse_int8",
            "compress stast_sparse_int8", "stream small", "stream full", "stream full_long",
            "pruned pruned"} <= names
    for _, args in MODELS:
        assert configs(args) and all(Path(f).is_file() for f in configs(args)), args
    by_name = dict(MODELS)  # the language layers go last, as the former stast.sh put them
    assert [Path(c).name for c in configs(by_name["stast ro e2e_mt_init"])] == [
        "stast_en_de.yaml", "e2e.yaml", "mt_init.yaml", "mt_init_ro.yaml", "en_ro.yaml"]
    assert [Path(c).name for c in configs(by_name["stast de mt"])] == ["mt_en_de.yaml"]
    assert [Path(c).name for c in configs(by_name["stast ro mt"])] == ["mt_en_de.yaml", "mt_en_ro.yaml"]


def test_the_recipe_is_configs_and_stages_only():
    """recipes/locale: YAML configs, stages files, README.md and RESULTS.md; no scripts. Every stages file
    loads, and every `python` command of a stage runs a file that exists."""
    files = [p for p in RECIPE.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".sh", ".py", ".bash")]
    assert {p.name for p in files if p.suffix not in (".yaml", ".yml")} == {"README.md", "RESULTS.md"}
    assert {p.stem for p in STAGES_FILES} >= {"stages", "demo", "lego", "stast", "fusion", "compress",
                                               "stream", "pruned"}
    for path in STAGES_FILES:
        for sets in VARIANTS.get(path.stem, [{}]):
            stages = load_stages(path, sets)
            assert stages and len({s.name for s in stages}) == len(stages)
            for s in stages:
                for argv in s.commands:
                    if argv[0] == sys.executable and argv[1] != "-m":
                        assert (ROOT / argv[1]).is_file(), argv
                        assert (ROOT / argv[1]).is_relative_to(ROOT / "benchmarks/locale"), argv  # analysis


@pytest.mark.parametrize("name,args", MODELS, ids=[n for n, _ in MODELS])
def test_recipe_config_parses(name, args, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["speechkit"])  # LightningCLI warns when pytest's argv is there too
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        run_lightning(["fit", "--print_config", *args])
    assert e.value.code in (0, None)
    assert "class_path: speechkit." in out.getvalue()
    if name.endswith("_mt_init"):  # a layered init_from replaces the earlier one whole: all three parts
        mt = f"exp/stast/en_{name.split()[1]}/mt/brick"
        for part in ("encoder: exp/locale/full/brick#encoder", f"text_encoder: {mt}#encoder",
                     f"decoder: {mt}#decoder"):
            assert part in out.getvalue(), part
    if name.startswith("stream "):  # streaming: causal, dynamic chunks
        body = yaml.safe_load(out.getvalue())["model"]["init_args"]["model"]["init_args"]["encoder"][
            "init_args"]["body"]["init_args"]
        assert body["causal"] and body["chunk_sizes"] == [4, 8, 16, 32] and body["left_context"] == 64
    if name.startswith("compress "):  # the top-level section (linked to the task's `compress`)
        cfg = yaml.safe_load(out.getvalue())
        assert (cfg["compress"] is None) == name.endswith("dense"), cfg["compress"]
        if "sparse" in name:
            assert cfg["compress"]["sparsity"]["n"] == 2 and cfg["compress"]["sparsity"]["m"] == 4


def test_the_readme_shows_each_stages_files_list(monkeypatch, capsys):
    """recipes/locale/README.md pastes `speechkit run … --list` for stages.yaml and every experiment: the same
    stages and commands as today's files (whether a stage is done depends on the machine)."""
    from speechkit.cli import main

    monkeypatch.chdir(ROOT)
    blocks = dict(re.findall(r"```console\n\$ speechkit (run .*? --list)\n(.*?)\n```",
                             (RECIPE / "README.md").read_text(), re.S))
    shown = {cmd.split()[1] for cmd in blocks}
    assert shown == {"recipes/locale"} | {f"recipes/locale/{p.name}" for p in STAGES_FILES
                                          if p.name != "stages.yaml"}
    status = re.compile(r"^(\s*\d+ \S+\s+)(?:done|todo)  ", re.M)
    for cmd, pasted in blocks.items():
        main(cmd.split())
        assert status.sub(r"\1", capsys.readouterr().out.rstrip("\n")) == status.sub(r"\1", pasted), cmd
