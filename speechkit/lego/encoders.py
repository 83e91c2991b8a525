"""Encoder bricks. Speech encoders map features (B, T, F) to ``Encoded``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import GlobalCMVN
from ..nn.brick import Brick
from .interface import Encoded, MarginalHead


class SpeechEncoder(Brick):
    """CMVN → [SpecAugment] → front end → body → marginal head.

    Args:
        frontend: a subsampling module, ``(x (B, T, F), lengths) → (B, T', D), lengths'``.
        body: a sequence model, ``(x (B, T', D), lengths') → (B, T', D)`` (e.g. Conformer).
        head: the marginal head over the interface vocabulary (LegoNN), or None.
        input_dim: feature dimension F (CMVN statistics live here, saved with the brick).
        specaugment: masking applied in training mode only, after CMVN.
    """

    def __init__(self, frontend: nn.Module, body: nn.Module, head: MarginalHead | None = None,
                 input_dim: int = 80, specaugment: nn.Module | None = None):
        super().__init__()
        self.cmvn = GlobalCMVN(input_dim)
        self.specaugment = specaugment
        self.frontend, self.body, self.head = frontend, body, head
        self.input_dim = input_dim

    input_kind = "fbank"

    @property
    def vocab_size(self) -> int | None:
        return None if self.head is None else self.head.vocab_size

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames out for ``lengths`` feature frames in (B,) → (B,)."""
        return self.frontend.output_lengths(lengths)

    def forward(self, feats: Tensor, lengths: Tensor) -> Encoded:
        if feats.shape[-1] != self.input_dim:
            raise ValueError(f"expected features with {self.input_dim} dims, got {feats.shape[-1]}")
        x = self.cmvn(feats)
        if self.specaugment is not None:
            x = self.specaugment(x)
        x, lengths = self.frontend(x, lengths)
        h = self.body(x, lengths)
        return Encoded(h, lengths, None if self.head is None else self.head(h))

    def stream_state(self, batch: int = 1, device=None) -> dict:
        """The state of ``batch`` streams that have seen nothing (for ``forward_chunk``)."""
        for part in (self.frontend, self.body):
            if not hasattr(part, "forward_chunk"):
                raise ValueError(f"{type(part).__name__} has no streaming mode (forward_chunk); a streaming "
                                 "encoder needs a FrameStack front end and a causal Conformer body")
        if not getattr(self.body, "chunk", None):
            raise ValueError("set the chunk size (encoder.body.chunk, in frames after subsampling) to stream")
        return {"features": None, "frames": None, "body": self.body.initial_state(batch, device)}

    def forward_chunk(self, feats: Tensor, state: dict, final: bool = False) -> tuple[Encoded, dict]:
        """Streaming: the next feature frames (B, N, F) of B streams (any N) → ``Encoded`` for the
        encoder frames of the chunks they complete (B, T', D) (T' a multiple of ``body.chunk``, maybe
        0; with ``final`` the last, partial chunk too), and the new state. The outputs equal
        ``forward`` on the whole stream under the same chunk size."""
        x, feats_left = self.frontend.forward_chunk(self.cmvn(feats), state["features"])
        if state["frames"] is not None:
            x = torch.cat([state["frames"], x], dim=1)  # (B, T', D) frames waiting for a whole chunk
        chunk, body = self.body.chunk, state["body"]
        ready = x.shape[1] if final else x.shape[1] // chunk * chunk
        outs = []
        for i in range(0, ready, chunk):
            y, body = self.body.forward_chunk(x[:, i: min(i + chunk, ready)], body)
            outs.append(y)
        h = torch.cat(outs, 1) if outs else x[:, :0]
        lengths = torch.full((x.shape[0],), h.shape[1], dtype=torch.long, device=x.device)
        state = {"features": feats_left, "frames": x[:, ready:], "body": body}
        return Encoded(h, lengths, None if self.head is None else self.head(h)), state


class SequenceEncoder(Brick):
    """Front end → [body] → [length controller → post] → marginal head, for token or marginal inputs.

    - a *text encoder* (MT source side): ``frontend`` = ``TokenEmbedding``; an upsampling
      ``LengthController`` (alpha 2–3) gives the CTC head room for the target sequence.
    - a *middle encoder* (marginals in, marginals out): ``frontend`` = an ingestor
      (``WEmb``/``BeamConv``) reading the previous brick's logits (B, T, V+1).

    Args:
        frontend: ``(inputs, lengths) → (x (B, T, D), lengths)``.
        body: ``(x, lengths) → x`` before length control, or None.
        length: a ``LengthController`` or None (lengths unchanged).
        post: ``(x, lengths) → x`` after length control, or None.
        head: the marginal head (mandatory for LegoNN bricks; None for the monolithic baseline).
    """

    def __init__(self, frontend: nn.Module, body: nn.Module | None = None, length: nn.Module | None = None,
                 post: nn.Module | None = None, head: MarginalHead | None = None):
        super().__init__()
        self.frontend, self.body, self.length, self.post, self.head = frontend, body, length, post, head

    @property
    def vocab_size(self) -> int | None:
        return None if self.head is None else self.head.vocab_size

    @property
    def input_kind(self) -> str:
        return self.frontend.input_kind

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return lengths if self.length is None else self.length.output_lengths(lengths)

    def forward(self, inputs: Tensor, lengths: Tensor) -> Encoded:
        x, lengths = self.frontend(inputs, lengths)
        if self.body is not None:
            x = self.body(x, lengths)
        if self.length is not None:
            x, lengths = self.length(x, lengths)
            if self.post is not None:
                x = self.post(x, lengths)
        return Encoded(x, lengths, None if self.head is None else self.head(x))


class Chain(Brick):
    """Encoder bricks in sequence: the first reads the inputs, each next one reads the previous
    brick's marginal logits (B, T, V+1). Returns the last ``Encoded``; the earlier ones are in
    ``.previous`` (each interface gets its own CTC loss during training).
    """

    def __init__(self, bricks: list[nn.Module]):
        super().__init__()
        if not bricks:
            raise ValueError("a chain needs at least one brick")
        self.bricks = nn.ModuleList(bricks)

    @property
    def vocab_size(self) -> int | None:
        return self.bricks[-1].vocab_size

    @property
    def input_kind(self) -> str:
        return self.bricks[0].input_kind

    @property
    def cmvn(self):
        return getattr(self.bricks[0], "cmvn", None)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for b in self.bricks:
            lengths = b.output_lengths(lengths)
        return lengths

    def forward(self, inputs: Tensor, lengths: Tensor) -> Encoded:
        outs: list[Encoded] = []
        for i, brick in enumerate(self.bricks):
            if i:
                if outs[-1].logits is None:
                    raise ValueError(f"chain brick {i - 1} has no marginal head; brick {i} cannot read it")
                inputs, lengths = outs[-1].logits, outs[-1].lengths
            outs.append(brick(inputs, lengths))
        last = outs[-1]
        return Encoded(last.hidden, last.lengths, last.logits, tuple(outs[:-1]))
