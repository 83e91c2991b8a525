"""Dataset preparations: ``speechkit prepare <corpus>`` → manifests under ``data/<corpus>``.

Each corpus module reads its dataset in the distributed layout (``locale`` builds its own); the shared
parts (layout errors, audio checks, manifest writing and validation) are in ``common``.
"""

from __future__ import annotations

import importlib
import inspect

CORPORA = ("locale", "librispeech", "iwslt14", "wmt16", "tedlium3", "commonvoice", "mustc", "covost2",
           "europarl_st")  # each a module here with a prepare_<name> function


def preparer(name: str):
    """The ``prepare_<corpus>`` function of ``name``."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    return getattr(importlib.import_module(f"{__name__}.{name}"), f"prepare_{name}")


def prepare(name: str, **options) -> dict:
    """Run corpus ``name``'s preparation with the options it takes (None = its default); an option it does
    not take is an error naming it."""
    fn = preparer(name)
    accepted = inspect.signature(fn).parameters
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    wrong = sorted(set(given) - set(accepted))
    if wrong:
        opts = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ValueError(f"{opts} do{'es' if len(wrong) == 1 else ''} not apply to the {name} corpus")
    return fn(**given)
