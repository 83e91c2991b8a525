"""Which search a model gets: one entry point for every decoder (attention or transducer)."""

from __future__ import annotations

from .attention import attention_beam_search
from .fusion import Fusion
from .transducer import Hypothesis, beam_search, greedy_search


def search(model, enc, beam: int = 1, nbest: int = 1, fusion: Fusion | None = None,
           max_symbols: int | None = None) -> list[list[Hypothesis]]:
    """Search an encoded batch with whatever decoder ``model`` has → per utterance an N-best list.

    Attention decoders: batched beam search (beam 1 = greedy). Transducers: batched greedy
    (beam 1, score None) or modified beam search; with ``fusion`` (LM / ILME) a transducer always
    runs beam search (beam 1 is then a one-slot beam). ``max_symbols``: a transducer's labels per frame
    (None: 3 for greedy, 1 for beam search, modified beam search proper).
    """
    if hasattr(getattr(model, "decoder", None), "memory"):  # an attention decoder (torch or onnxruntime)
        return attention_beam_search(model, enc, max(beam, 1), max(nbest, 1), fusion=fusion)
    if beam <= 1 and fusion is None:
        return [[Hypothesis(tuple(h), None)] for h in greedy_search(model, enc, max_symbols or 3)]
    return beam_search(model, enc, max(beam, 1), max(nbest, 1), fusion=fusion, max_symbols=max_symbols or 1)
