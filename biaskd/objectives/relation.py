"""``relation``: match how the student relates the examples of a batch to each other to how
the teacher does — the structure RSA compares, not the coordinates."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from biaskd.objectives.base import Objective, Outputs

KINDS = ("rsa", "rsa_mse", "rkd")


def cosine_matrix(f: torch.Tensor) -> torch.Tensor:
    """(B, B) cosine similarities between the rows of ``f`` (L2-normalised, then dot products)."""
    n = F.normalize(f.float(), dim=1)
    return n @ n.T


def normalised_distances(f: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of the B(B−1)/2 pairs i < j, divided by their mean (RKD's ψ_D)."""
    d = torch.pdist(f.float())
    return d / d.mean().clamp_min(1e-12)


class Relation(Objective):
    """``kind``:

    - ``rsa`` (default): ``1 − mean_i cos(S_s[i], S_t[i])`` with S the cosine-similarity
      matrix of the batch's features — Abnar et al.'s ``rep_loss`` (full rows, diagonal included);
    - ``rsa_mse``: ``mean_ij (S_s − S_t)²_ij``;
    - ``rkd``: RKD distance loss (Park et al. 2019): Huber (δ = 1) between the student's and
      teacher's mean-normalised pairwise distances, mean over pairs i < j.
    """

    name = "relation"
    reads_temperature = False
    needs_features = True
    trains_logits = False
    options = {"kind": KINDS}

    def __init__(self, kind: str = "rsa") -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown relation kind {kind!r} ({', '.join(KINDS)})")
        self.kind = kind

    def term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        s, t = student.features, teacher.features
        if self.kind == "rkd":
            if len(s) < 2:  # no pairs
                return s.new_zeros((), dtype=torch.float32)
            return F.smooth_l1_loss(normalised_distances(s), normalised_distances(t), beta=1.0)
        ss, st = cosine_matrix(s), cosine_matrix(t)
        if self.kind == "rsa_mse":
            return F.mse_loss(ss, st)
        return 1.0 - F.cosine_similarity(ss, st, dim=1).mean()
