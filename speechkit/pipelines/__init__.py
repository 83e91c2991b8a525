"""Pipelines: what the commands do, between the library and the thin CLI: bricks on disk (``bricks``),
decoding a manifest, cascades and fusion tuning (``decode``), composing bricks (``compose``), streaming
evaluation (``stream_eval``) and side-by-side decode speed (``bench``)."""
