"""The shared recipe runner (speechkit/recipe.py, `speechkit run`): numbered stages, resumable, with
variables and clear errors."""

import sys
from pathlib import Path

import pytest

from speechkit.cli import main
from speechkit.recipe import RecipeError, load_stages, run_stages, select

STAGES = """\
vars:
  data: {data}
  exp: {exp}
  corpus: null
stages:
  - name: prepare
    run: python -c "open('{{data}}/log', 'a').write('prepare {{corpus}}\\\\n')"
  - name: count
    run: python -c "open('{{data}}/log', 'a').write('count\\\\n'); open('{{data}}/n', 'w').write('3')"
    creates: "{{data}}/n"
  - name: train
    fit: [conf/a.yaml, conf/b.yaml]
    root: "{{exp}}/model"
    args: --trainer.max_steps=2
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    folder = tmp_path / "recipes" / "toy"
    folder.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (folder / "stages.yaml").write_text(STAGES.format(data=tmp_path / "data", exp=tmp_path / "exp"))
    return folder


def test_stages_run_in_order_once_and_again_when_their_command_changes(recipe, tmp_path):
    log = tmp_path / "data" / "log"
    stages = select(load_stages(recipe, {"corpus": "/c1"}), None, "count")
    assert [(s.number, s.name) for s in stages] == [(1, "prepare"), (2, "count")]
    run_stages(stages, log=lambda _: None)
    assert log.read_text().split("\n")[:-1] == ["prepare /c1", "count"]
    run_stages(stages, log=lambda _: None)  # both done: nothing runs
    assert log.read_text().count("\n") == 2
    run_stages(select(load_stages(recipe, {"corpus": "/c2"}), "prepare", "count"), log=lambda _: None)
    assert log.read_text().split("\n")[:-1] == ["prepare /c1", "count", "prepare /c2"]  # count: `creates`
    run_stages(select(load_stages(recipe, {"corpus": "/c2"}), "2", "2"), force=True, log=lambda _: None)
    assert log.read_text().endswith("count\n")


def test_fit_stage_resumes_from_its_last_checkpoint_and_is_done_with_a_brick(recipe, tmp_path):
    (train,) = select(load_stages(recipe, {"corpus": "x"}), "train", None)
    (argv,) = train.commands
    assert argv[:4] == (sys.executable, "-m", "speechkit.cli", "fit")
    assert f"--config={recipe / 'conf/a.yaml'}" in argv and "--trainer.max_steps=2" in argv
    lines = []
    run_stages([train], dry_run=True, log=lines.append)
    assert "--ckpt_path=last" not in lines[-1]
    (tmp_path / "exp/model/checkpoints").mkdir(parents=True)
    (tmp_path / "exp/model/checkpoints/last.ckpt").write_text("")
    run_stages([train], dry_run=True, log=lines.append)
    assert lines[-1].endswith("--ckpt_path=last")
    (tmp_path / "exp/model/brick").mkdir()
    (tmp_path / "exp/model/brick/weights.safetensors").write_text("")
    assert train.done()


def test_errors_name_the_variable_key_stage_or_file(recipe, tmp_path):
    with pytest.raises(RecipeError, match=r"stage 1 \(prepare\) needs \{corpus\}: set it with --set corpus="):
        load_stages(recipe)
    with pytest.raises(RecipeError, match="--set copus: .* has no variable 'copus'"):
        load_stages(recipe, {"copus": "x"})
    with pytest.raises(RecipeError, match="no stage 'decode'; stages: 1 prepare, 2 count, 3 train"):
        select(load_stages(recipe, {"corpus": "x"}), "decode", None)
    text = (recipe / "stages.yaml").read_text()
    (recipe / "stages.yaml").write_text(text.replace("    creates:", "    makes:"))
    with pytest.raises(RecipeError, match=r"stages.yaml stage 2 \(count\).*unknown: \['makes'\]"):
        load_stages(recipe, {"corpus": "x"})
    (recipe / "stages.yaml").write_text(text.replace("{data}/log", "{dat}/log"))
    with pytest.raises(RecipeError, match=r"unknown variable \{dat\}"):
        load_stages(recipe, {"corpus": "x"})
    with pytest.raises(RecipeError, match="no stages.yaml"):
        load_stages(tmp_path)


def test_cli_reports_a_failing_stage_and_how_to_resume(recipe, tmp_path, capsys):
    text = (recipe / "stages.yaml").read_text()
    (recipe / "stages.yaml").write_text(text.replace("open('{data}/n', 'w')", "exit(3)"))
    with pytest.raises(SystemExit, match=r"stage 2 \(count\) failed with exit code 3; .* --stage 2"):
        main(["run", str(recipe), "--set", "corpus=x", "--stop-stage", "count"])
    main(["run", str(recipe), "--set", "corpus=x", "--list"])
    out = capsys.readouterr().out
    assert " 1 prepare      done" in out and " 2 count        todo" in out and " 3 train        todo" in out
    with pytest.raises(SystemExit, match="error: --set 'corpus': expected NAME=VALUE"):
        main(["run", str(recipe), "--set", "corpus"])


def test_vocab_sizes_are_set_on_the_target_and_the_source_side_separately():
    from jsonargparse import Namespace as N

    from speechkit.train.cli import set_vocab_sizes

    emb = N(class_path="speechkit.nn.transformer.TokenEmbedding", init_args=N(vocab_size=512, dim=8))
    head = N(class_path="speechkit.lego.interface.MarginalHead", init_args=N(vocab_size=128))
    model = N(class_path="speechkit.models.aed.AttentionModel", init_args=N(
        encoder=N(class_path="E", init_args=N(frontend=emb, head=head)),
        decoder=N(class_path="D", init_args=N(vocab_size=128))))
    data = N(class_path="DM", init_args=N(vocab_size=128, source_vocab_size=512, transcript_vocab_size=64))
    assert set_vocab_sizes(model, 1000, None) == 2 and emb.init_args.vocab_size == 512
    assert set_vocab_sizes(model, None, 2000) == 1 and emb.init_args.vocab_size == 2000
    assert head.init_args.vocab_size == model.init_args.decoder.init_args.vocab_size == 1000
    assert set_vocab_sizes(data, 1000, 300) == 3 and vars(data.init_args) == {
        "vocab_size": 1000, "source_vocab_size": 300, "transcript_vocab_size": 300}
    # STAST declares its acoustic encoder (CTC over the transcripts) and text encoder source-side
    ctc = N(class_path="speechkit.lego.interface.MarginalHead", init_args=N(vocab_size=64))
    temb = N(class_path="speechkit.nn.transformer.TokenEmbedding", init_args=N(vocab_size=64))
    stast = N(class_path="speechkit.models.stast.STAST", init_args=N(
        encoder=N(class_path="speechkit.lego.encoders.SpeechEncoder", init_args=N(head=ctc)),
        text_encoder=N(class_path="speechkit.lego.encoders.SequenceEncoder", init_args=N(frontend=temb)),
        decoder=N(class_path="speechkit.lego.decoders.AttentionDecoder", init_args=N(vocab_size=128))))
    assert set_vocab_sizes(stast, 1000, 300) == 3
    assert ctc.init_args.vocab_size == temb.init_args.vocab_size == 300
    assert stast.init_args.decoder.init_args.vocab_size == 1000


def test_in_process_runs_speechkit_commands_here_and_reports_failures(recipe, tmp_path, capsys):
    from speechkit.recipe import SPEECHKIT, in_process

    missing = str(tmp_path / "none.jsonl")
    assert in_process([*SPEECHKIT, "tokenizer", missing, "--out", str(tmp_path / "t.model")]) == 1
    assert "manifest not found" in capsys.readouterr().err  # the error a subprocess would have printed
    assert in_process([sys.executable, "-c", "raise SystemExit(4)"]) == 4  # anything else: a subprocess
