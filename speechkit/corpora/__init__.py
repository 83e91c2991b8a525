"""Dataset preparations: ``speechkit prepare <corpus>`` → manifests under ``data/<corpus>``.

Each corpus module reads its dataset in the distributed layout (``locale`` builds its own); the shared
parts (layout errors, audio checks, manifest writing and validation) are in ``common``.
"""

from __future__ import annotations

import importlib
import inspect

CORPORA = {  # name → "module:function"
    "locale": "locale:prepare_locale",
    "librispeech": "librispeech:prepare_librispeech",
    "iwslt14": "iwslt14:prepare_iwslt14",
    "wmt16": "wmt16:prepare_wmt16",
    "tedlium3": "tedlium3:prepare_tedlium3",
    "commonvoice": "commonvoice:prepare_commonvoice",
    "mustc": "mustc:prepare_mustc",
    "covost2": "covost2:prepare_covost2",
    "europarl_st": "europarl_st:prepare_europarl_st",
}


def preparer(name: str):
    """The ``prepare_<corpus>`` function of ``name``."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    module, func = CORPORA[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


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
