"""CoVoST 2 X→En (speechkit.corpora.covost2) on a tiny copy in its distributed layout (Common Voice 4 +
the CoVoST TSV): the split, manifests, validation, idempotence, named errors, and the whole recipe
(recipes/covost2) through `speechkit run`."""

import json
import tarfile

import pytest
from dataset_fixtures import FIT, altered, bad_then_skipped, run_recipe, say

from speechkit.corpora import prepare
from speechkit.corpora.common import LayoutError, PrepareError
from speechkit.data.manifest import load_manifest

FR_EN = [  # (sentence, translation, CoVoST split)
    ("le chat dort sur le canapé", "the cat sleeps on the sofa", "train"),
    ("il fait beau aujourd'hui", "the weather is nice today", "train"),
    ('il a dit "bonjour" à tout le monde', 'he said "hello" to everyone', "train_covost"),
    ("nous allons au cinéma demain", "we are going to the cinema tomorrow", "train"),
    ("ouvre la fenêtre s'il te plaît", "open the window please", "dev"),
    ("le train part à midi", "the train leaves at noon", "dev"),
    ("elle lit un livre", "she is reading a book", "test"),
    ("merci pour votre temps", "thank you for your time", "test"),
    ("cette phrase n'a pas de division", "this sentence has no split", "excluded"),
]
DE_EN = [
    ("die Katze schläft", "the cat is sleeping", "train"),
    ("das Wetter ist schön", "the weather is nice", "train"),
    ("wir gehen ins Kino", "we are going to the cinema", "dev"),
    ("danke für Ihre Zeit", "thank you for your time", "test"),
]
CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\n"
COVOST_HEADER = "path\tsentence\ttranslation\tclient_id\tsplit\n"


def make_language(root, src, pairs, archive=False):
    """``root/<src>/{validated.tsv,clips/*.mp3}`` (Common Voice 4) and ``root/covost_v2.<src>_en.tsv``
    (or only its ``.tsv.tar.gz``, as downloaded). One validated clip more than CoVoST translates."""
    cv, covost = [CV_HEADER], [COVOST_HEADER]
    for i, (sentence, translation, split) in enumerate(pairs):
        clip, client = f"common_voice_{src}_{1000 + i}.mp3", f"client{i % 3:040d}"
        say(sentence, root / src / "clips" / clip, voice=src, subtype="MPEG_LAYER_III")
        cv.append(f"{client}\t{clip}\t{sentence}\t2\t0\t\t\t\n")
        covost.append(f"{clip}\t{sentence}\t{translation}\t{client}\t{split}\n")
    say("un de plus", root / src / "clips" / f"common_voice_{src}_999.mp3", voice=src,
        subtype="MPEG_LAYER_III")
    cv.append(f"clientx\tcommon_voice_{src}_999.mp3\tun de plus\t2\t0\t\t\t\n")
    (root / src / "validated.tsv").write_text("".join(cv))
    tsv = root / f"covost_v2.{src}_en.tsv"
    tsv.write_text("".join(covost))
    if archive:
        with tarfile.open(f"{tsv}.tar.gz", "w:gz") as tar:
            tar.add(tsv, arcname=tsv.name)
        tsv.unlink()


@pytest.fixture(scope="module")
def covost(tmp_path_factory):
    root = tmp_path_factory.mktemp("covost2")
    make_language(root, "fr", FR_EN)
    make_language(root / "cv-corpus-4-2019-12-10", "de", DE_EN, archive=True)
    return root


def test_covost2_split_and_manifests(covost, tmp_path):
    out = tmp_path / "data"
    summary = prepare("covost2", root=covost, out=out, workers=2)
    m = summary["manifests"]
    assert summary["params"]["langs"] == ["de", "fr"]  # found: the fr TSV and the de archive
    assert {k: v["utterances"] for k, v in m.items()} == {
        "st/fr-en/train": 4, "st/fr-en/dev": 2, "st/fr-en/test": 2,
        "st/de-en/train": 2, "st/de-en/dev": 1, "st/de-en/test": 1}
    train = load_manifest(out / "st/fr-en/train.jsonl", require_audio=True)
    assert [u.id for u in train] == [f"common_voice_fr_{1000 + i}" for i in (0, 1, 2, 3)]  # + train_covost
    u = train[2]
    assert (u.text, u.translation, u.lang) == (FR_EN[2][0], {"en": FR_EN[2][1]}, "fr")  # quotes kept
    assert u.speaker == f"client{2:040d}" and u.audio.endswith("fr/clips/common_voice_fr_1002.mp3")
    assert 0.5 < u.duration < 5.0 and u.offset == 0.0
    test = load_manifest(out / "st/de-en/test.jsonl")
    assert (test[0].text, test[0].translation) == (DE_EN[3][0], {"en": DE_EN[3][1]})
    again = prepare("covost2", root=covost, out=out, workers=2)
    assert again["written"] == [] and again["manifests"] == m  # idempotent
    one = prepare("covost2", root=covost, out=tmp_path / "one", langs=["fr"])
    assert set(one["manifests"]) == {"st/fr-en/train", "st/fr-en/dev", "st/fr-en/test"}


def test_covost2_bad_entries_are_named_or_skipped(covost, tmp_path):
    with altered(covost / "fr/clips/common_voice_fr_1005.mp3"):
        summary, problems = bad_then_skipped("covost2", r"1 bad entry .*\n  common_voice_fr_1005: audio file "
                                             r"missing", tmp_path, root=covost, langs=["fr"])
        assert summary["manifests"]["st/fr-en/dev"]["utterances"] == 1
        assert problems[0].startswith("common_voice_fr_1005")


def test_covost2_layout_errors_say_where_the_data_comes_from(covost, tmp_path):
    with pytest.raises(LayoutError, match=r"(?s)no covost_v2.<src>_en.tsv.* under .*commonvoice.mozilla.org.*"
                       r"facebookresearch/covost.*clips/common_voice_fr_<n>.mp3"):
        prepare("covost2", root=tmp_path)
    with pytest.raises(LayoutError, match=r"the Common Voice release es/validated.tsv not found under"):
        prepare("covost2", root=covost, langs=["es"])
    (tmp_path / "it/clips").mkdir(parents=True)
    (tmp_path / "it/validated.tsv").write_text("client_id\tpath\n")
    with pytest.raises(LayoutError, match=r"neither covost_v2.it_en.tsv nor covost_v2.it_en.tsv.tar.gz"):
        prepare("covost2", root=tmp_path, langs=["it"])
    (tmp_path / "covost_v2.it_en.tsv").write_text(COVOST_HEADER)
    with pytest.raises(PrepareError, match=r"it/validated.tsv: no column sentence in its header"):
        prepare("covost2", root=tmp_path)


@pytest.mark.slow
def test_covost2_recipe_runs_every_stage(covost, tmp_path):
    """prepare, tokenizers, ASR of the French transcripts (transducer), STAST Fr→En warm-started from it
    (MuST-C's config; two steps each, toy sizes), decodes of STAST and ASR on test, and their scores."""
    run_recipe("covost2", corpus=covost, src="fr", data=tmp_path / "data", exp=tmp_path / "exp", vocab=25,
         src_vocab=30, fit_args=FIT + " --data.init_args.max_frames=4000",
         asr_args="--config=tests/configs/tiny_librispeech_transducer.yaml",
         st_args="--config=tests/configs/tiny_mustc_stast.yaml")
    exp = tmp_path / "exp"
    for brick in ("asr", "stast"):
        assert (exp / brick / "brick/weights.safetensors").is_file(), brick
    run_config = (exp / "stast/lightning_logs/version_0/config.yaml").read_text()
    assert f"init_from:\n      encoder: {exp}/asr/brick#encoder" in run_config
    for name, word in (("st", "book"), ("asr", "livre")):
        rows = [json.loads(x) for x in (exp / f"decode/{name}-test.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and word in rows[0]["ref"], name
