"""Training objectives shared by every scenario.

``kd_loss`` is Hinton et al.'s soft-target distillation loss, exactly as DESIGN.md defines it:

    L = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(y, z_s)

averaged over examples (or over unmasked positions for sequence outputs). The T² factor keeps
the soft-target gradient, ``α·T·(q − p)`` per example, on the same scale as the CE gradient when
T changes. Abnar et al.'s own code leaves T² out; ``t_squared=False`` reproduces that choice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: the label of an input without a gold label (e.g. a transfer-set input): skipped by the CE term
UNLABELLED = -1


def _flatten(logits: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    c = logits.shape[-1]
    flat = logits.reshape(-1, c)
    if mask is not None:
        mask = mask.reshape(-1).to(torch.bool)
    return flat, mask


def _mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over examples of KL(softmax(z_t/T) ‖ softmax(z_s/T)) (no T² factor)."""
    s, m = _flatten(student_logits, mask)
    t, _ = _flatten(teacher_logits, None)
    if s.shape != t.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape")
    log_q = F.log_softmax(s.float() / temperature, dim=-1)
    log_p = F.log_softmax(t.float() / temperature, dim=-1)
    per_example = (log_p.exp() * (log_p - log_q)).sum(-1)
    return _mean(per_example, m)


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over labelled examples (or unmasked positions).

    A label below 0 (:data:`UNLABELLED`) marks an example without a gold label — a transfer-set
    input only the teacher labels — which the CE term skips; a batch without any label gives 0.
    """
    flat, m = _flatten(logits, mask)
    labels = labels.reshape(-1)
    per_example = F.cross_entropy(flat.float(), labels, reduction="none", ignore_index=UNLABELLED)
    labelled = labels >= 0
    return _mean(per_example, labelled if m is None else m & labelled)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    t_squared: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton distillation loss (scalar): ``α·T²·KL + (1−α)·CE``, batch mean.

    ``labels`` may be ``None`` only when ``alpha == 1`` (pure distillation, e.g. on unlabelled
    transfer inputs). ``mask`` (same leading shape as the logits without the class axis) selects
    the positions that count, for sequence outputs.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    scale = temperature**2 if t_squared else 1.0
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if alpha > 0:
        loss = loss + alpha * scale * soft_target_kl(student_logits, teacher_logits, temperature, mask)
    if alpha < 1:
        if labels is None:
            raise ValueError("kd_loss needs labels when alpha < 1 (the CE term has weight 1 - alpha)")
        loss = loss + (1 - alpha) * cross_entropy(student_logits, labels, mask)
    return loss
