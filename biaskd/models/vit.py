"""A small Vision Transformer (Dosovitskiy et al. 2021) for the digits: the student of DeiT's
setting (Touvron et al. 2021), whose gain from a convnet teacher they credit to its inductive bias.

The image is cut into non-overlapping ``patch``×``patch`` patches, each mapped linearly to a
``dim``-vector (a strided convolution), a learned class token is prepended, learned position
embeddings are added, and ``depth`` pre-norm encoder layers (:class:`torch.nn.TransformerEncoder`)
mix the tokens. ``features(x)`` is the class token's final representation (after a LayerNorm),
``forward(x) = head(features(x))``.

With ``distill_token=True`` (DeiT's distillation token) a second learned token joins the class
token; its own head learns from the teacher (objective ``token``), and the model predicts with the
mean of the two heads' logits (DeiT's inference). ``heads(x)`` gives both heads' logits.

Its only built-in spatial structure is the patch grid: a shift by a multiple of ``patch`` pixels
moves whole patches (the patch embedding is equivariant to those), but the position embeddings are
learned, so nothing makes it invariant to a shift — what a convnet has by construction, and what
distillation from one may or may not pass on.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from biaskd.models.vision import ImageClassifier


class ViT(ImageClassifier):
    def __init__(
        self,
        num_classes: int = 10,
        in_shape: Sequence[int] = (1, 28, 28),
        patch: int = 7,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 128,
        dropout: float = 0.0,
        distill_token: bool = False,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in in_shape)
        if min(patch, dim, depth, heads, mlp_dim) <= 0:
            raise ValueError(f"ViT sizes must be positive: patch={patch}, dim={dim}, depth={depth}, heads={heads}, "
                             f"mlp_dim={mlp_dim}")
        if h % patch or w % patch:
            raise ValueError(f"ViT: patch size {patch} does not divide the {h}×{w} image")
        if dim % heads:
            raise ValueError(f"ViT: dim {dim} is not divisible by heads {heads}")
        self.patch_embed = nn.Conv2d(c, dim, kernel_size=patch, stride=patch)
        n_tokens = 2 if distill_token else 1  # the class token (and the distillation token)
        self.cls_token = nn.Parameter(torch.zeros(1, n_tokens, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens + (h // patch) * (w // patch), dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.head_distill = nn.Linear(dim, num_classes) if distill_token else None
        self.feature_dim = dim

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final representation of every token (B, tokens, dim): the class token first, then
        the distillation token (if any), then the patches."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        t = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], dim=1) + self.pos_embed
        return self.norm(self.blocks(t))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The class head's and the distillation head's logits, from one pass."""
        if self.head_distill is None:
            raise ValueError("heads(x) needs a distillation token (ViT(distill_token=True))")
        t = self.tokens(x)
        return self.head(t[:, 0]), self.head_distill(t[:, 1])

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head_distill is None:
            return super().features_and_logits(x)
        t = self.tokens(x)
        return t[:, 0], (self.head(t[:, 0]) + self.head_distill(t[:, 1])) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]
