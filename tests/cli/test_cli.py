"""The command line end to end, in subprocesses: fit → decode, and kill → resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from speechkit.pipelines.bricks import TOKENIZER_FILES

pytestmark = pytest.mark.slow  # end to end (pytest.ini: the slow tier)

TESTS = Path(__file__).parents[1]
ROOT = TESTS.parent
CONF = TESTS / "configs"  # the toy configs, named after the recipe config each shrinks
DEMO = ROOT / "recipes" / "locale" / "conf" / "demo.yaml"
CONFS = ("-c", DEMO, "-c", CONF / "tiny_locale_demo.yaml")  # the demo recipe, shrunk


def _cmd(*args):
    return [sys.executable, "-m", "speechkit.cli", *map(str, args)]


def _fit_args(corpus: Path, root: Path, *extra, confs=()):
    asr = corpus / "asr"
    data = "--data.init_args."
    return _cmd("fit", *CONFS, *confs, f"--trainer.default_root_dir={root}",
                f"{data}train={asr / 'train.jsonl'}", f"{data}valid={asr / 'dev.jsonl'}",
                f"{data}test={asr / 'test.jsonl'}", f"{data}tokenizer={root / 'tok.model'}",
                "--trainer.enable_progress_bar=false", *extra)


def _run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert p.returncode == 0, (f"{' '.join(map(str, cmd))}\n"
                               f"STDOUT:{p.stdout[-3000:]}\nSTDERR:{p.stderr[-3000:]}")
    return p


def test_readme_fit_and_decode_from_a_directory_outside_the_repository(tiny_corpus, tmp_path):
    """The README's `speechkit fit -c recipes/locale/conf/demo.yaml` and `speechkit decode
    exp/locale/demo/brick data/locale/asr/test.jsonl`, run elsewhere with --data-root / --exp-root."""
    data, exp, cwd = tmp_path / "corpora", tmp_path / "runs", tmp_path / "elsewhere"
    for part in ("asr", "audio"):
        (data / "locale").mkdir(parents=True, exist_ok=True)
        (data / "locale" / part).symlink_to(tiny_corpus / part)
    cwd.mkdir()
    roots = ("--data-root", data, "--exp-root", exp)
    _run(_cmd("fit", *CONFS, *roots, "--trainer.max_steps=3", "--trainer.enable_progress_bar=false"), cwd=cwd)
    assert (exp / "locale/demo/brick/weights.safetensors").is_file()
    assert (data / "locale/tokenizer/en128.model").is_file()
    p = _run(_cmd("decode", "exp/locale/demo/brick", "data/locale/asr/test.jsonl", *roots, "--max-utts", "2",
                  "--json"), cwd=cwd)
    assert json.loads(p.stdout.strip().splitlines()[-1])["hyps"] == str(exp / "locale/demo/decode-test.jsonl")
    assert not list(cwd.iterdir())


def test_fit_then_decode_through_the_cli(tiny_corpus, tmp_path):
    root = tmp_path / "exp"
    _run(_fit_args(tiny_corpus, root, "--trainer.max_steps=12"))
    brick = root / "brick"
    for name in ("config.yaml", "weights.safetensors", "interface.json", TOKENIZER_FILES["target"]):
        assert (brick / name).is_file(), name
    iface = json.loads((brick / "interface.json").read_text())
    assert iface["global_step"] == 12 and iface["input"]["kind"] == "fbank"
    assert 0 < iface["length_ratio"]["p5"] <= iface["length_ratio"]["median"] <= iface["length_ratio"]["p95"]
    assert list(root.glob("lightning_logs/version_*/config.yaml")), "resolved config not saved"
    test = tiny_corpus / "asr" / "test.jsonl"
    p = _run(_cmd("decode", brick, test, "--out", tmp_path / "hyps.jsonl", "--json", "--beam", "2"))
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    n = sum(1 for _ in open(test))
    assert summary["utts"] == n and 0 <= summary["wer"]
    rows = [json.loads(x) for x in open(tmp_path / "hyps.jsonl")]
    assert len(rows) == n and {"id", "ref", "hyp"} <= set(rows[0])
    p = _run(_cmd("score", tmp_path / "hyps.jsonl"))
    assert f"WER {summary['wer']:.2f}%" in p.stdout
    test_cmd = _fit_args(tiny_corpus, root, f"--ckpt_path={root / 'checkpoints' / 'last.ckpt'}")
    test_cmd[test_cmd.index("fit")] = "test"
    p = _run(test_cmd)
    assert "test/wer" in p.stdout and "test/ctc" in p.stdout


def test_wrong_config_key_is_named(tiny_corpus, tmp_path):
    p = subprocess.run(_fit_args(tiny_corpus, tmp_path, "--model.init_args.lrr=1"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "lrr" in p.stderr


def test_killed_run_resumes_from_last_checkpoint(tiny_corpus, tmp_path):
    root = tmp_path / "exp"
    proc = subprocess.Popen(_fit_args(tiny_corpus, root, "--trainer.max_steps=100000",
                                      "--model.init_args.total_steps=40"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    last = root / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and any(root.glob("checkpoints/*step=1[05]*.ckpt")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up, like a node failure
    proc.wait()
    assert last.is_file()
    p = _run(_fit_args(tiny_corpus, root, "--trainer.max_steps=40", "--model.init_args.total_steps=40",
                       "--ckpt_path=last"))
    assert "Restored all states from the checkpoint" in p.stderr + p.stdout
    assert f"taking over the stale lock {root / '.speechkit-lock'} (pid {proc.pid}" in p.stderr  # killed run
    assert not (root / ".speechkit-lock").exists()
    iface = json.loads((root / "brick" / "interface.json").read_text())
    assert iface["global_step"] == 40
    # the resolved config of the resumed run names the same model
    cfgs = sorted(root.glob("lightning_logs/version_*/config.yaml"))
    assert len(cfgs) == 2
    a, b = (yaml.safe_load(c.read_text())["model"] for c in cfgs)
    assert a == b


MT = ROOT / "recipes" / "locale" / "conf" / "lego" / "mt_de_en.yaml"


def test_mt_fit_decode_bleu_and_compose_through_the_cli(tiny_corpus, tmp_path):
    mt, root, data = tiny_corpus / "mt" / "de-en", tmp_path / "mt", "--data.init_args."
    _run(_cmd("fit", "-c", MT, "-c", CONF / "tiny_locale_lego_mt_de_en.yaml",
              f"--trainer.default_root_dir={root}",
              f"{data}train={mt / 'train.jsonl'}", f"{data}valid={mt / 'dev.jsonl'}",
              f"{data}test={mt / 'test.jsonl'}",
              f"{data}tokenizer={tmp_path / 'en.model'}", f"{data}source_tokenizer={tmp_path / 'de.model'}",
              "--trainer.enable_progress_bar=false"))
    brick = root / "brick"
    iface = json.loads((brick / "interface.json").read_text())
    assert iface["input"]["kind"] == "text" and iface["target_lang"] == "en"
    assert (brick / TOKENIZER_FILES["source"]).is_file()
    test = mt / "test.jsonl"
    p = _run(_cmd("decode", brick, test, "--json", "--beam", "3", "--out", tmp_path / "mt.jsonl"))
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["utts"] == sum(1 for _ in open(test))
    assert 0 <= summary["bleu"] <= 100 and "chrf" in summary
    refs = [json.loads(x)["ref"] for x in open(tmp_path / "mt.jsonl")]
    english = {json.loads(x)["id"]: json.loads(x)["translation"]["en"] for x in open(test)}
    assert refs[0].split()[0] in english[json.loads(open(test).readline())["id"]].lower()
    p = _run(_cmd("score", tmp_path / "mt.jsonl", "--json"))
    assert json.loads(p.stdout)["bleu"] == summary["bleu"]

    _run(_cmd("compose", brick, "--decoder", brick, "--out", tmp_path / "self"))
    p = _run(_cmd("decode", tmp_path / "self", test, "--json", "--beam", "3",
                  "--out", tmp_path / "self.jsonl"))
    assert open(tmp_path / "self.jsonl").read() == open(tmp_path / "mt.jsonl").read()
    alpha = _run(_cmd("compose", brick, "--decoder", brick, "--out", tmp_path / "x", "--alpha", "2.0"))
    assert "brick written" in alpha.stdout
    other = tmp_path / "other"  # the same brick speaking another vocabulary is refused, naming both
    subprocess.run(["cp", "-r", str(brick), str(other)], check=True)
    (other / "interface.json").write_text(json.dumps({**iface, "tokenizer": {**iface["tokenizer"],
                                                      "fingerprint": "0123456789abcdef"}}))
    p = subprocess.run(_cmd("compose", other, "--decoder", brick, "--out", tmp_path / "bad"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "0123456789abcdef" in p.stderr
    assert iface["tokenizer"]["fingerprint"] in p.stderr
    assert not (tmp_path / "bad").exists()


STAST_CONF = ROOT / "recipes" / "locale" / "conf" / "stast"


def test_stast_fit_decode_and_cascade_through_the_cli(tiny_corpus, tmp_path, monkeypatch):
    st, mt, data = tiny_corpus / "st" / "en-de", tiny_corpus / "mt" / "en-de", "--data.init_args."
    de, en = f"{data}tokenizer={tmp_path / 'de.model'}", tmp_path / "en.model"
    split = lambda d: [f"{data}{s}={d / f'{n}.jsonl'}" for s, n in  # noqa: E731
                       (("train", "train"), ("valid", "dev"), ("test", "test"))]
    root = tmp_path / "stast"
    p = _run(_cmd("fit", "-c", STAST_CONF / "stast_en_de.yaml", "-c", CONF / "tiny_locale_stast_en_de.yaml",
                  f"--trainer.default_root_dir={root}", *split(st), de, f"{data}transcript_tokenizer={en}",
                  "--trainer.enable_progress_bar=false"))
    metrics = (next(root.glob("lightning_logs/version_*/metrics.csv"))).read_text().splitlines()[0]
    for term in ("train/st", "train/mt", "train/ctc", "train/adapt", "val/bleu"):
        assert term in metrics, term
    brick = root / "brick"
    assert json.loads((brick / "interface.json").read_text())["target_lang"] == "de"
    assert (brick / TOKENIZER_FILES["transcript"]).is_file()
    test, n = st / "test.jsonl", sum(1 for _ in open(st / "test.jsonl"))
    p = _run(_cmd("decode", brick, test, "--json", "--beam", "2", "--out", tmp_path / "st.jsonl"))
    assert json.loads(p.stdout.strip().splitlines()[-1])["utts"] == n
    german = {json.loads(x)["id"]: json.loads(x)["translation"]["de"] for x in open(test)}
    row = json.loads(open(tmp_path / "st.jsonl").readline())
    assert row["ref"].split()[0] in german[row["id"]].lower()

    # the cascade: an ASR brick's transcripts translated by an MT brick
    _run(_cmd("fit", "-c", STAST_CONF / "mt_en_de.yaml", "-c", CONF / "tiny_locale_stast_mt_en_de.yaml",
              f"--trainer.default_root_dir={tmp_path / 'mt'}", *split(mt), de, f"{data}source_tokenizer={en}",
              "--trainer.enable_progress_bar=false"))
    _run(_fit_args(tiny_corpus, tmp_path / "asr", "--trainer.max_steps=12"))
    asr_brick, mt_brick = tmp_path / "asr" / "brick", tmp_path / "mt" / "brick"
    _run(_cmd("decode", asr_brick, test, "--out", tmp_path / "asr.jsonl"))
    p = _run(_cmd("decode", asr_brick, test, "--then", mt_brick, "--json",
                  "--out", tmp_path / "cascade.jsonl"))
    rows = [json.loads(x) for x in open(tmp_path / "cascade.jsonl")]
    assert json.loads(p.stdout.strip().splitlines()[-1])["utts"] == n == len(rows)
    assert [r["asr"] for r in rows] == [json.loads(x)["hyp"] for x in open(tmp_path / "asr.jsonl")]
    assert all(r["ref"] == german_ref for r, german_ref in zip(rows, (json.loads(x)["ref"] for x in
                                                                       open(tmp_path / "st.jsonl"))))
    # the second stage is the MT brick on the first stage's transcripts (a tiny ASR says nothing yet,
    # so the first stage is replaced by the true transcripts, one of them empty)
    import speechkit.pipelines.decode as sd

    lines = [json.loads(x) for x in open(test)]
    said = [u["text"] for u in lines]
    said[1] = ""
    monkeypatch.setattr(sd, "decode_manifest", lambda *a, **k: ([{"hyp": t} for t in said], None))
    rows, _ = sd.cascade_manifest(asr_brick, mt_brick, test)
    monkeypatch.undo()
    assert [r["asr"] for r in rows] == said and rows[1]["hyp"] == ""
    text = tmp_path / "text.jsonl"
    keys = ("kind", "version", "id", "text", "translation")
    text.write_text("".join(json.dumps({k: u[k] for k in keys}) + "\n" for u in lines[:1] + lines[2:]))
    _run(_cmd("decode", mt_brick, text, "--out", tmp_path / "mt_on_text.jsonl"))
    assert [r["hyp"] for i, r in enumerate(rows) if i != 1] == [json.loads(x)["hyp"] for x in
                                                                  open(tmp_path / "mt_on_text.jsonl")]
    p = subprocess.run(_cmd("decode", asr_brick, test, "--then", asr_brick), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0 and "must read text" in p.stderr


def test_lm_fusion_ilma_and_mwer_through_the_cli(tiny_corpus, tmp_path):
    """ASR with ILM training → an LM on text → decode with fusion → tune-fusion → adapt-ilm → MWER-ILME."""
    root, asr = tmp_path / "asr", tiny_corpus / "asr"
    _run(_fit_args(tiny_corpus, root, "--trainer.max_steps=12",
                   "--model.init_args.model.init_args.ilm_weight=0.2"))
    brick, tok = root / "brick", root / "tok.model"
    data = "--data.init_args."
    lm_root = tmp_path / "lm"
    conf = ROOT / "recipes" / "locale" / "conf" / "fusion"
    _run(_cmd("fit", "-c", conf / "lm_transformer.yaml", "-c",
              CONF / "tiny_locale_fusion_lm_transformer.yaml",
              f"--trainer.default_root_dir={lm_root}", f"{data}train={asr / 'train.jsonl'}",
              f"{data}valid={asr / 'dev.jsonl'}", f"{data}tokenizer={tok}",
              "--trainer.enable_progress_bar=false"))
    lm = lm_root / "brick"
    assert json.loads((lm / "interface.json").read_text())["kind"] == "LanguageModel"
    assert "val/ppl" in (next(lm_root.glob("lightning_logs/version_*/metrics.csv"))).read_text()
    test = asr / "test.jsonl"
    p = _run(_cmd("decode", brick, test, "--lm", lm, "--lm-weight", "0.3", "--ilm-weight", "0.1",
                  "--length-reward", "0.5", "--beam", "2", "--json", "--out", tmp_path / "fused.jsonl"))
    assert json.loads(p.stdout.strip().splitlines()[-1])["utts"] == sum(1 for _ in open(test))
    p = _run(_cmd("tune-fusion", brick, asr / "dev.jsonl", "--lm", lm, "--lm-weights", "0,0.3",
                  "--ilm-weights", "0,0.1", "--length-rewards", "0", "--beam", "2", "--json",
                  "--plot", tmp_path / "fusion.png"))
    assert (tmp_path / "fusion.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(x) for x in p.stdout.strip().splitlines()]
    assert [(r["lm_weight"], r["ilm_weight"]) for r in rows[:-1]] == [(0, 0), (0, 0.1), (0.3, 0), (0.3, 0.1)]
    assert rows[-1]["best"]["wer"] == min(r["wer"] for r in rows[:-1])
    # an LM speaking another vocabulary is refused by name
    other = tmp_path / "other_lm"
    other.mkdir()
    for f in lm.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    iface = json.loads((other / "interface.json").read_text())
    iface["tokenizer"]["fingerprint"] = "0000"
    (other / "interface.json").write_text(json.dumps(iface))
    p = subprocess.run(_cmd("decode", brick, test, "--lm", other, "--lm-weight", "0.3"), capture_output=True,
                       text=True)
    assert p.returncode != 0 and "tokenizer 0000" in p.stderr
    p = subprocess.run(_cmd("decode", tmp_path / "no_such_brick", test, "--lm", lm), capture_output=True,
                       text=True)
    assert p.returncode != 0 and "no_such_brick: no such brick directory" in p.stderr
    assert "Traceback" not in p.stderr
    # ILMA from the training text, then decode the adapted brick (no LM at run time)
    ilma = tmp_path / "ilma"
    p = _run(_cmd("adapt-ilm", brick, asr / "train.jsonl", "--valid", asr / "dev.jsonl", "--out", ilma,
                  "--steps", "5", "--json"))
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["ilm_ppl_after"] < summary["ilm_ppl_before"]
    assert json.loads((ilma / "interface.json").read_text())["ilma"]["steps"] == 5
    _run(_cmd("decode", ilma, test, "--json", "--out", tmp_path / "ilma.jsonl"))
    # MWER-ILME fine-tuning from the brick, with the LM in the loop
    mwer = tmp_path / "mwer"
    cmd = _fit_args(tiny_corpus, mwer, "--trainer.max_steps=3", "--trainer.val_check_interval=1.0",
                    "--trainer.log_every_n_steps=1",
                    f"--model.init_args.init_from={json.dumps({'': str(brick)})}",
                    f"--model.init_args.lm={lm}",
                    confs=("-c", conf / "mwer_ilme.yaml"))
    p = _run(cmd)
    assert (mwer / "brick" / "weights.safetensors").is_file()
    metrics = (next(mwer.glob("lightning_logs/version_*/metrics.csv"))).read_text()
    assert "train/mwer" in metrics and "train/expected_errors" in metrics


def test_compressed_fit_export_decode_and_bench_through_the_cli(tiny_corpus, tmp_path):
    import csv

    root = tmp_path / "sparse"
    p = _run(_fit_args(tiny_corpus, root, "--trainer.max_steps=16",
                       confs=("-c", CONF / "tiny_locale_demo_compress.yaml")))
    assert "compression coverage:" in p.stdout and "not divisible by M=4" in p.stdout  # depthwise conv
    iface = json.loads((root / "brick" / "interface.json").read_text())
    comp = iface["compression"]
    assert comp["config"]["sparsity"]["n"] == 2 and comp["inputs"]
    assert {f["format"] for f in comp["params"].values()} >= {"2:4+int8", "int8"}
    assert comp["sad"]["sad/total_flips"] >= 0 and 0 <= comp["sad"]["sad/from_start"] <= 1
    rows = list(csv.DictReader(open(next(root.glob("lightning_logs/version_*/metrics.csv")))))
    assert [r["step"] for r in rows if r.get("sad/total")] == ["8", "12", "16"]
    test = tiny_corpus / "asr" / "test.jsonl"
    p = _run(_cmd("decode", root / "brick", test, "--json", "--out", tmp_path / "h.jsonl"))
    assert json.loads(p.stdout.strip().splitlines()[-1])["utts"] == sum(1 for _ in open(test))
    test_cmd = _fit_args(tiny_corpus, root, f"--ckpt_path={root / 'checkpoints' / 'last.ckpt'}",
                         confs=("-c", CONF / "tiny_locale_demo_compress.yaml"))
    test_cmd[test_cmd.index("fit")] = "test"
    assert "test/wer" in _run(test_cmd).stdout  # a compressed checkpoint reloads
    # one-shot export of a dense brick; a compressed one is refused by name
    dense = tmp_path / "dense"
    _run(_fit_args(tiny_corpus, dense, "--trainer.max_steps=4"))
    p = _run(_cmd("export", dense / "brick", "--out", tmp_path / "oneshot", "--sparsity", "2:4",
                  "--bits", "8", "--json"))
    res = json.loads(p.stdout)
    assert res["bytes"] < 0.5 * res["dense_bytes"]
    p = subprocess.run(_cmd("export", root / "brick", "--out", tmp_path / "x", "--bits", "8"),
                       capture_output=True, text=True)
    assert p.returncode != 0 and "compressed already" in p.stderr
    p = _run(_cmd("bench", root / "brick", test, "--against", dense / "brick", "--max-utts", "3", "--json"))
    bench = json.loads(p.stdout)
    assert bench["speedup"] > 0 and set(bench["choices"].values()) <= {"reference", "fp32", "int8"}
    assert all(r["utts"] == 3 for r in bench["results"].values())
