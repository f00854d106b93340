"""Sequence encoders for subject–verb agreement: LSTM, Transformer, Universal Transformer.

They differ in inductive bias — recurrence (LSTM), none beyond attention (Transformer), and
recurrence in depth with shared weights (Universal Transformer, Dehghani et al. 2019) — and
share one interface so that training, distillation and analysis code treat them alike:

- ``forward(x) -> (B, num_classes)`` classification logits;
- ``features(x) -> (B, d)`` the representation analysed (probe-set features);
- ``features_and_logits(x)`` both of the above from one forward pass;
- ``token_features(x) -> (B, L, d)`` per-position top-layer states;
- ``lm_logits(x) -> (B, L, vocab_size)`` next-token logits: position t scores token t + 1.
  Only for causal models (LSTM, ``causal=True`` Transformer/UT) built with ``lm_head=True``.

``x`` is a right-padded LongTensor ``(B, L)`` with pad id 0; masks come from ``x != 0``, so a
sequence's outputs do not depend on how much padding follows it. ``features`` is the top-layer
state at the last non-pad position for every model (for a causal model the only position that
has seen the whole prefix; for the bidirectional Transformer the same position keeps the
representation comparable across architectures) — ``pooling="mean"`` averages the non-pad
positions instead. For the LM setup, build with ``lm_head=True`` (``tie_embeddings=True`` shares
the input embedding matrix) and ``num_classes=0`` if no classifier is wanted.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from biaskd.data.base import PAD_ID
from biaskd.errors import ConfigError


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    """The (n, d) sine/cosine table of Vaswani et al. (2017), for positions or steps 0..n-1."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table


def lengths_of(x: torch.Tensor) -> torch.Tensor:
    """Non-pad lengths of right-padded ids, at least 1 (an all-pad row reads as one pad token)."""
    return (x != PAD_ID).sum(1).clamp(min=1)


class SequenceModel(nn.Module):
    """Shared embedding, heads and pooling; subclasses implement :meth:`token_features`."""

    input_kind = "tokens"
    causal: bool = True

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        d_model: int,
        embedding_dim: int,
        dropout: float,
        lm_head: bool,
        tie_embeddings: bool,
        pooling: str,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ConfigError(f"vocab_size must be at least 2, got {vocab_size}")
        if pooling not in ("last", "mean"):
            raise ConfigError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.feature_dim = d_model
        self.pooling = pooling
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_classes) if num_classes > 0 else None
        self.tie_embeddings = tie_embeddings
        if tie_embeddings and embedding_dim != d_model:
            raise ConfigError(f"tie_embeddings needs embedding_dim == d_model ({embedding_dim} != {d_model})")
        if lm_head or tie_embeddings:
            self.lm_head = nn.Linear(d_model, vocab_size, bias=True)
            if tie_embeddings:
                self.lm_head.weight = self.embedding.weight
        else:
            self.lm_head = None

    def token_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lengths = lengths_of(x)
        if self.pooling == "mean":
            mask = (x != PAD_ID).unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / lengths.unsqueeze(-1).to(h.dtype)
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, h.size(-1))
        return h.gather(1, index).squeeze(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.token_features(x), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise ConfigError(f"{type(self).__name__} was built with num_classes=0 (no classifier)")
        return self.classifier(self.dropout(self.features(x)))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features(x), forward(x))`` from one pass, for objectives that read both."""
        if self.classifier is None:
            raise ConfigError(f"{type(self).__name__} was built with num_classes=0 (no classifier)")
        f = self.features(x)
        return f, self.classifier(self.dropout(f))

    def lm_logits(self, x: torch.Tensor) -> torch.Tensor:
        if not self.causal:
            raise ConfigError(
                f"{type(self).__name__} is bidirectional: next-token logits would see the token "
                f"they predict. Use causal=True for the LM setup."
            )
        if self.lm_head is None:
            raise ConfigError(f"{type(self).__name__} has no LM head; build it with lm_head=True")
        return self.lm_head(self.dropout(self.token_features(x)))


class LSTMEncoder(SequenceModel):
    """Unidirectional LSTM over packed sequences (padding never enters the recurrence)."""

    causal = True

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        d_model: int = 256,
        embedding_dim: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.1,
        lm_head: bool = False,
        tie_embeddings: bool = False,
        pooling: str = "last",
    ) -> None:
        embedding_dim = embedding_dim or d_model
        super().__init__(vocab_size, num_classes, d_model, embedding_dim, dropout, lm_head, tie_embeddings, pooling)
        self.lstm = nn.LSTM(
            embedding_dim, d_model, num_layers=num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def token_features(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.dropout(self.embedding(x))
        packed = pack_padded_sequence(emb, lengths_of(x).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return h


class _AttentionModel(SequenceModel):
    """Token + position embeddings and masks shared by the two Transformer variants."""

    def __init__(self, vocab_size, num_classes, d_model, nhead, dim_feedforward, dropout, causal,
                 positional, max_len, lm_head, tie_embeddings, pooling) -> None:
        super().__init__(vocab_size, num_classes, d_model, d_model, dropout, lm_head, tie_embeddings, pooling)
        if d_model % nhead:
            raise ConfigError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        if positional not in ("learned", "sinusoidal"):
            raise ConfigError(f"positional must be 'learned' or 'sinusoidal', got {positional!r}")
        self.causal = causal
        self.positional = positional
        self.max_len = max_len
        if positional == "learned":
            self.position = nn.Embedding(max_len, d_model)
        else:
            self.register_buffer("position_table", sinusoid_table(max_len, d_model), persistent=False)
        self.final_norm = nn.LayerNorm(d_model)
        self._layer_kwargs = dict(
            d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )

    def positions(self, length: int) -> torch.Tensor:
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len} of {type(self).__name__}")
        if self.positional == "learned":
            return self.position.weight[:length]
        return self.position_table[:length]

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(attention mask, key padding mask), both boolean with True = may not attend."""
        pad = x == PAD_ID
        pad[:, 0] = False  # the first token is real in right-padded rows; an all-pad row then has no NaNs
        attn = None
        if self.causal:
            L = x.size(1)
            attn = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=1)
        return attn, pad


class TransformerEncoderModel(_AttentionModel):
    """A pre-norm Transformer encoder; ``causal=True`` is the paper's "Transformer-seq"."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        d_model: int = 128,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
        causal: bool = False,
        positional: str = "learned",
        max_len: int = 512,
        lm_head: bool = False,
        tie_embeddings: bool = False,
        pooling: str = "last",
    ) -> None:
        super().__init__(vocab_size, num_classes, d_model, nhead, dim_feedforward or 4 * d_model, dropout,
                         causal, positional, max_len, lm_head, tie_embeddings, pooling)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(**self._layer_kwargs) for _ in range(num_layers))

    def token_features(self, x: torch.Tensor) -> torch.Tensor:
        attn, pad = self.masks(x)
        h = self.dropout(self.embedding(x) + self.positions(x.size(1)))
        for layer in self.layers:
            h = layer(h, src_mask=attn, src_key_padding_mask=pad)
        return self.final_norm(h)


class UniversalTransformer(_AttentionModel):
    """One Transformer layer applied ``num_steps`` times (Dehghani et al. 2019, without ACT).

    Before every step the position embedding and a step ("time") embedding are added, as in
    the paper's coordinate embeddings. With sinusoidal step embeddings (the default) the
    parameter count does not depend on ``num_steps``; ``step_embedding="learned"`` adds one
    vector per step.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        d_model: int = 128,
        nhead: int = 4,
        num_steps: int = 4,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
        causal: bool = False,
        positional: str = "sinusoidal",
        step_embedding: str = "sinusoidal",
        max_len: int = 512,
        lm_head: bool = False,
        tie_embeddings: bool = False,
        pooling: str = "last",
    ) -> None:
        super().__init__(vocab_size, num_classes, d_model, nhead, dim_feedforward or 4 * d_model, dropout,
                         causal, positional, max_len, lm_head, tie_embeddings, pooling)
        if num_steps < 1:
            raise ConfigError(f"num_steps must be at least 1, got {num_steps}")
        if step_embedding not in ("learned", "sinusoidal"):
            raise ConfigError(f"step_embedding must be 'learned' or 'sinusoidal', got {step_embedding!r}")
        self.num_steps = num_steps
        self.step_embedding = step_embedding
        if step_embedding == "learned":
            self.step = nn.Embedding(num_steps, d_model)
        else:
            self.register_buffer("step_table", sinusoid_table(num_steps, d_model), persistent=False)
        self.layer = nn.TransformerEncoderLayer(**self._layer_kwargs)

    def token_features(self, x: torch.Tensor) -> torch.Tensor:
        attn, pad = self.masks(x)
        pos = self.positions(x.size(1))
        steps = self.step.weight if self.step_embedding == "learned" else self.step_table
        h = self.dropout(self.embedding(x))
        for t in range(self.num_steps):
            h = self.layer(h + pos + steps[t], src_mask=attn, src_key_padding_mask=pad)
        return self.final_norm(h)
