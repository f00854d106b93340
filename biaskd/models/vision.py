"""Vision models for the MNIST scenario: a CNN (translation-equivariant convolutions and
pooling, the inductive bias under study) and an MLP (none of it).

All expose (through :class:`ImageClassifier`) ``features(x)`` — the penultimate representation
that analysis compares across models — and ``forward(x) = head(features(x))``;
``features_and_logits(x)`` returns both from one pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ImageClassifier(nn.Module):
    """An encoder and a linear head: ``features(x) = encoder(x)``, ``forward(x) =
    head(features(x))``. A subclass builds its layers (``encoder``, ``head``, ``feature_dim``) in
    ``__init__``, after ``super().__init__()``, or names its encoder's parts itself and overrides
    ``features``; the attribute names are its state-dict keys, their order the order of init."""

    input_kind = "image"
    encoder: nn.Module
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features(x), forward(x))`` from one pass, for objectives that read both."""
        f = self.features(x)
        return f, self.head(f)


class MLP(ImageClassifier):
    def __init__(
        self,
        num_classes: int = 10,
        in_shape: Sequence[int] = (1, 28, 28),
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden or any(h <= 0 for h in hidden):
            raise ValueError(f"MLP hidden sizes must be positive, got {list(hidden)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = 1
        for s in in_shape:
            width *= int(s)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.feature_dim = width


class CNN(ImageClassifier):
    def __init__(
        self,
        num_classes: int = 10,
        in_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels or any(c <= 0 for c in channels) or hidden <= 0 or kernel_size <= 0:
            raise ValueError(f"CNN sizes must be positive: channels={list(channels)}, hidden={hidden}")
        c_in, h, w = (int(s) for s in in_shape)
        convs: list[nn.Module] = []
        for c in channels:
            convs += [nn.Conv2d(c_in, c, kernel_size, padding=kernel_size // 2), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, h, w = c, h // 2, w // 2
        self.conv = nn.Sequential(*convs)
        fc: list[nn.Module] = [nn.Flatten(), nn.Linear(c_in * h * w, hidden), nn.ReLU()]
        if dropout > 0:
            fc.append(nn.Dropout(dropout))
        self.fc = nn.Sequential(*fc)
        self.head = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))  # its encoder in two parts (state-dict keys conv.*, fc.*)


class GlobalPoolCNN(ImageClassifier):
    """A CNN whose features are globally max-pooled over positions (``cnn_gp``).

    Where :class:`CNN` flattens its last feature map into a fully connected layer — so its
    features still say *where* each pattern was — this one keeps, per channel, only the
    strongest response anywhere in the image. Convolution (equivariance) followed by a
    position-free pooling makes its features nearly invariant to small shifts: a stronger
    translation bias than ``cnn``, for asking whether a stronger bias transfers better.

    Every conv but the last is followed by 2×2 max pooling; ``features(x)`` is the pooled
    vector (one value per channel of the last conv), and the head is linear on it.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels or any(c <= 0 for c in channels) or kernel_size <= 0:
            raise ValueError(f"GlobalPoolCNN sizes must be positive: channels={list(channels)}")
        c_in, h, w = (int(s) for s in in_shape)
        if min(h, w) < 2 ** (len(channels) - 1):
            raise ValueError(
                f"GlobalPoolCNN: {h}×{w} inputs are too small for {len(channels) - 1} 2×2 poolings"
            )
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        self.feature_dim = c_in
