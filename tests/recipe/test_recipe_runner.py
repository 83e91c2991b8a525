"""The shared recipe runner (speechkit/recipe.py, `speechkit run`): numbered stages, resumable, with
variables and clear errors."""

import ast
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


def test_fit_args_go_to_every_fit_stage_only_and_do_not_undo_it(recipe, tmp_path, capsys):
    ddp = "--trainer.devices=2 --trainer.strategy=ddp"
    stages = load_stages(recipe, {"corpus": "x"}, ddp.split())
    plain = load_stages(recipe, {"corpus": "x"})
    for s, p in zip(stages, plain):
        want = ((*p.commands[0], *ddp.split()),) if s.name == "train" else p.commands
        assert s.commands == want
    (tmp_path / "exp/model/brick").mkdir(parents=True)
    (tmp_path / "exp/model/brick/weights.safetensors").write_text("")
    assert stages[2].done()  # a fit stage is done by its brick, wherever it was trained
    main(["run", str(recipe), "--set", "corpus=x", "--list", f"--fit-args={ddp}"])
    assert f"--trainer.max_steps=2 {ddp}" in capsys.readouterr().out


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

    call = in_process(main)  # the CLI's entry point is given: speechkit.recipe does not import the CLI
    missing = str(tmp_path / "none.jsonl")
    assert call([*SPEECHKIT, "tokenizer", missing, "--out", str(tmp_path / "t.model")]) == 1
    assert "manifest not found" in capsys.readouterr().err  # the error a subprocess would have printed
    assert call([sys.executable, "-c", "raise SystemExit(4)"]) == 4  # anything else: a subprocess
    (tmp_path / "h.jsonl").write_text('{"ref": "a b", "hyp": "a c"}\n')
    with open(tmp_path / "out.txt", "w") as sink:  # stdout: kept in the file and shown
        assert call([*SPEECHKIT, "score", str(tmp_path / "h.jsonl"), "--json"], stdout=sink) == 0
        assert call([sys.executable, "-c", "print('sub')"], stdout=sink) == 0
    assert '"wer": 50.0' in capsys.readouterr().out
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert '"wer": 50.0' in lines[0] and lines[1] == "sub"
    tree = ast.parse(Path(sys.modules["speechkit.recipe"].__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.endswith("cli")}, imported  # the runner never imports the CLI


EXPERIMENT = """\
vars:
  exp: {exp}
  lang: de
  beams: "1 4"
stages:
  - name: train
    fit: [conf/a.yaml, "conf/a.yaml?", "conf/b_{{lang}}.yaml?", conf/c.yaml]
    root: "{{exp}}/m"
  - name: eval
    foreach: {{b: "{{beams}}", x: [p, q]}}
    run:
      - python -c "print('{{b}}{{x}}')"
      - python -c "print('{{lang}}')"
    stdout: "{{exp}}/results/eval.txt"
"""


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    folder = tmp_path / "recipes" / "toy"
    (folder / "conf").mkdir(parents=True)
    for name in ("a", "b_ro", "c"):
        (folder / "conf" / f"{name}.yaml").write_text("{}\n")
    (folder / "stages.yaml").write_text("stages:\n  - {name: x, run: python -c pass}\n")
    path = folder / "exp1.yaml"
    path.write_text(EXPERIMENT.format(exp=tmp_path / "exp"))
    return path


def test_a_stages_file_beside_stages_yaml_is_a_recipe_of_its_own(experiment, tmp_path):
    train, ev = load_stages(experiment)
    assert [c.split("=", 1)[1] for c in train.commands[0] if c.startswith("--config=")] == [
        str(experiment.parent / "conf/a.yaml"), str(experiment.parent / "conf/c.yaml")]  # `?`: left out
    (ro,) = [c for c in load_stages(experiment, {"lang": "ro"})[0].commands[0] if "b_ro" in c]
    assert ro == f"--config={experiment.parent / 'conf/b_ro.yaml'}"  # the optional layer that exists
    assert ev.command.startswith("python -c 'print('\"'\"'1p'\"'\"')' && python -c")  # as written
    assert ev.commands[0][0] == sys.executable
    assert [load_stages(experiment.parent)[0].name] == ["x"]  # the folder: its stages.yaml
    (experiment.parent / "exp2.yaml").write_text("stages:\n  - {name: y, run: 'echo {exp}'}\n")
    assert load_stages(experiment.parent / "exp2.yaml")[0].commands == (("echo", "exp/toy/exp2"),)
    with pytest.raises(RecipeError, match="conf/a.yaml is not a stages file"):
        load_stages(experiment.parent / "conf" / "a.yaml")
    with pytest.raises(RecipeError, match="no such recipe folder or stages file"):
        load_stages(experiment.parent / "nothing.yaml")


def test_foreach_repeats_the_commands_and_stdout_keeps_what_they_print(experiment, tmp_path, capsys):
    (_, ev) = load_stages(experiment)
    printed = [argv[-1] for argv in ev.commands]
    assert [p.split("'")[1] for p in printed[::2]] == ["1p", "1q", "4p", "4q"]  # first key outermost
    assert len(ev.commands) == 8
    out = tmp_path / "exp/results/eval.txt"
    run_stages([ev], log=lambda _: None)
    assert out.read_text().split() == ["1p", "de", "1q", "de", "4p", "de", "4q", "de"]
    assert "4q" in capsys.readouterr().out  # shown as well
    assert ev.done()
    out.unlink()
    assert not ev.done()  # a stage whose output file is gone runs again
    (ev2,) = select(load_stages(experiment, {"beams": "2"}), "eval", None)
    assert not ev2.done()  # another command
    run_stages([ev2], log=lambda _: None)
    assert out.read_text().split() == ["2p", "de", "2q", "de"]  # rewritten, not appended
    text = experiment.read_text().replace("print('{lang}')", "raise SystemExit(5)")
    experiment.write_text(text)
    (ev3,) = select(load_stages(experiment, {"beams": "3"}), "eval", None)
    with pytest.raises(SystemExit, match=r"stage 2 \(eval\) failed with exit code 5"):
        run_stages([ev3], log=lambda _: None)
    assert out.read_text().split() == ["2p", "de", "2q", "de"]  # a failed stage leaves the file as it was
    experiment.write_text(text.replace("foreach: {b:", "foreach: {lang:"))
    with pytest.raises(RecipeError, match="foreach 'lang' would hide the variable"):
        load_stages(experiment)
    experiment.write_text(text.replace('    root: "{exp}/m"', '    root: "{exp}/m"\n    stdout: x'))
    with pytest.raises(RecipeError, match=r"stage 1 \(train\): \['stdout'\] belong to run stages"):
        load_stages(experiment)


def test_demo_runs_the_locale_recipes_demo_stages(tmp_path, monkeypatch, capsys):
    from speechkit import demo
    from speechkit.recipe import SPEECHKIT

    monkeypatch.chdir(tmp_path)
    calls, fail = [], set()

    def fake(argv, **kw):  # stands in for the speechkit subprocesses
        verb, args = argv[len(SPEECHKIT)], list(argv[len(SPEECHKIT) + 1:])
        calls.append(args if verb == "fit" else [verb, *args])
        if verb == "fit":
            (tmp_path / "exp/d/brick").mkdir(parents=True, exist_ok=True)
            (tmp_path / "exp/d/brick/weights.safetensors").write_text("")
        if verb == "decode":
            Path(args[args.index("--out") + 1]).write_text(
                '{"ref": "open the file", "hyp": "open a file"}\n{"ref": "quit", "hyp": "quit"}\n')
        return 1 if verb in fail else 0

    r = demo.run_demo(minutes=2.5, max_utts=300, out="exp/d", call=fake, threads=3)
    assert [c[0] for c in calls] == ["prepare", "--config=" + str(demo.DEFAULT_CONFIG), "decode", "score"]
    assert calls[0] == ["prepare", "locale", "--out", "data/locale", "--max-utts", "300"]
    assert calls[1][1:] == ["--trainer.default_root_dir=exp/d", "--threads=3",
                            "--model.init_args.time_schedule=true", "--trainer.max_time=00:00:02:30"]
    assert calls[2] == ["decode", "exp/d/brick", "data/locale/asr/test.jsonl", "--out",
                        "exp/d/decode-test.jsonl"]
    assert r["wer"] == pytest.approx(0.25) and "REF: open the file" in capsys.readouterr().out
    calls.clear()
    demo.run_demo(out="exp/d", call=fake)  # trained: the brick is there; the rest runs again
    assert [c[0] for c in calls] == ["prepare", "decode", "score"] and calls[0][-1] == "data/locale"
    (tmp_path / "exp/d/brick/weights.safetensors").unlink()
    (tmp_path / "exp/d/checkpoints").mkdir()
    (tmp_path / "exp/d/checkpoints/last.ckpt").write_text("")
    calls.clear()
    cfg = tmp_path / "my.yaml"
    cfg.write_text("{}\n")
    demo.run_demo(out="exp/d", config="my.yaml", call=fake)  # a killed run resumes; --config: from here
    assert calls[1][0] == f"--config={cfg}" and calls[1][-1] == "--ckpt_path=last"
    assert "--threads=auto" in calls[1]  # the default
    assert "resuming from exp/d/checkpoints/last.ckpt" in capsys.readouterr().out
    fail.add("decode")
    with pytest.raises(SystemExit, match=r"demo stage 3 \(decode\) failed with exit code 1; run `speechkit"):
        demo.run_demo(out="exp/d", call=fake)
    tree = ast.parse(Path(demo.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "recipe" in imported and not {m for m in imported if m.endswith("cli")}, imported
