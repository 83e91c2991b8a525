"""``speechkit presets``: every recipe config and brick preset, each with a one-line description."""

from pathlib import Path

from speechkit.cli import main
from speechkit.recipe import REPO, describe, presets


def test_every_config_and_preset_is_listed_with_a_description():
    found = dict(presets())
    on_disk = {str(p.relative_to(REPO)) for p in [*REPO.glob("recipes/*/conf/**/*.yaml"),
                                                  *REPO.glob("modules/**/*.yaml")]}
    assert set(found) == on_disk and "recipes/locale/conf/demo.yaml" in found
    assert "modules/encoders/conformer_xs.yaml" in found
    assert all(found.values()), [p for p, d in found.items() if not d]  # a config without a # comment
    assert found["recipes/locale/conf/lego/mt_ro_en.yaml"] == \
        "Ro→En: the De→En recipe on the Romanian catalogs (same English interface vocabulary en128)"


def test_describe_takes_the_first_sentence_of_the_leading_comment(tmp_path: Path):
    f = tmp_path / "a.yaml"
    f.write_text("# Longer runs, e.g. three times: layered\n# last. More here.\nx: 1\n# not this\n")
    assert describe(f) == "Longer runs, e.g. three times: layered last"
    assert describe(f, width=12) == "Longer runs…"
    f.write_text("x: 1  # no leading comment\n")
    assert describe(f) == ""


def test_presets_verb(capsys):
    main(["presets"])
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if "recipes/locale/conf/demo.yaml" in s)
    assert "speechkit demo: a small conformer transducer" in line
