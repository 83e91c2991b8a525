"""Every argument of every verb has help text, and ``--help`` shows each option's default."""

import argparse

import pytest

from speechkit.cli import build_parser, main


def _verbs() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {verb: p for verb, p in sub.choices.items() if p.add_help}  # fit/validate/test: LightningCLI's


def test_every_argument_of_every_verb_has_help_with_its_default():
    verbs = _verbs()
    assert {"decode", "demo", "score", "export", "adapt-ilm"} <= set(verbs)
    for verb, parser in verbs.items():
        text = " ".join(parser.format_help().split())
        for a in parser._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"speechkit {verb} {a.dest}: no help"
            shown = a.default is not None and a.default is not False and a.option_strings
            if shown and "default" not in a.help:
                assert f"(default: {a.default})" in text, f"speechkit {verb} {a.option_strings[0]}"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["decode", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--beam BEAM 1 = greedy, >1 = modified beam search (default: 1)" in text
    assert "(0: in this process) (default: 0)" in text and "brick directory" in text


def test_demo_threads_is_a_count_or_auto(capsys):
    parse = build_parser().parse_args
    assert parse(["demo", "--threads", "3"]).threads == 3 and parse(["demo"]).threads == "auto"
    with pytest.raises(SystemExit):
        parse(["demo", "--threads", "many"])
    assert "argument --threads: expected a number of threads or 'auto', got 'many'" in capsys.readouterr().err
