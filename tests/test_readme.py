"""README.md and the brick presets state what the code builds: every "N.NM parameters" there is the
parameter count (Lightning's, to 0.1M) of the model its config builds."""

import re
from pathlib import Path

import yaml

from speechkit.nn.brick import build
from speechkit.train.cli import run_lightning

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "recipes" / "locale" / "conf"
MODELS = {"demo": [CONF / "demo.yaml"], "full": [CONF / "demo.yaml", CONF / "full.yaml"]}  # README's two
STATED = re.compile(r"(\d+\.\d)M[- ]parameters?")


def millions(n: int) -> str:
    return f"{n / 1e6:.1f}"


def test_readme_parameter_counts_are_what_the_configs_build():
    built = {}
    for name, configs in MODELS.items():
        args = [a for c in configs for a in ("-c", str(c))]
        cli = run_lightning([*args, "--trainer.logger=false"], run=False)
        built[name] = millions(sum(p.numel() for p in cli.model.parameters()))
    assert built == {"demo": "2.1", "full": "3.0"}  # 2,071,474 and 3,038,290
    stated = STATED.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    wrong = sorted(set(stated) - set(built.values()))
    assert not wrong, f"README.md states {wrong}M parameters; the configs build {built}"
    assert set(built.values()) <= set(stated), f"README.md should state {built}"


def test_brick_presets_state_their_parameter_counts():
    for path in sorted((ROOT / "modules").glob("**/*.yaml")):
        stated = STATED.findall(path.read_text(encoding="utf-8"))
        if stated:
            n = sum(p.numel() for p in build(yaml.safe_load(path.read_text())).parameters())
            assert stated == [millions(n)], f"{path} states {stated[0]}M parameters, builds {n:,}"


def test_readme_paths_are_where_the_commands_write():
    from speechkit.cli import build_parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    demo_out = build_parser().parse_args(["demo"]).out  # `speechkit demo`
    root = lambda conf: yaml.safe_load((CONF / conf).read_text())["trainer"]["default_root_dir"]  # noqa: E731
    fit_root = root("demo.yaml")  # `speechkit fit -c recipes/locale/conf/demo.yaml`
    assert (demo_out, fit_root) == ("exp/demo", "exp/locale/demo")
    assert f"load_brick(\"{demo_out}/brick\"" in readme and f"speechkit decode {fit_root}/brick" in readme
    assert f"{root('full.yaml')}/brick" in readme  # STAST's and MWER's prerequisite
    bricks = set(re.findall(r"\bexp/[\w/.+-]*?/brick\b", readme))
    assert "exp/locale/brick" not in bricks  # no command writes there
