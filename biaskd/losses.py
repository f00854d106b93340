"""Training objectives shared by every scenario.

``kd_loss`` is Hinton et al.'s soft-target distillation loss, exactly as docs/design.md defines it:

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
    # (B, C) as it is: a reshape of a tensor that needs grad adds a view node to every backward
    flat = logits if logits.dim() == 2 else logits.reshape(-1, logits.shape[-1])
    if mask is not None:
        mask = mask.reshape(-1).to(torch.bool)
    return flat, mask


def _mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def teacher_log_probs(teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(z_t / T)`` over the class axis, in float32: all the KD loss reads of the
    teacher. It does not depend on the student, so for cached teacher outputs a table of it is
    computed once instead of on every step (see :func:`kd_loss_from_log_probs`)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = teacher_logits.float()
    return F.log_softmax(t if temperature == 1 else t / temperature, dim=-1)


def _weighted_kl(
    student_logits: torch.Tensor,
    log_p: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None,
    weight: float,
) -> torch.Tensor:
    """``weight`` × the mean over examples (or unmasked positions) of KL(p ‖ softmax(z_s/T)),
    given ``log_p = log p``: the KL of each row is Σ_c p_c (log p_c − log q_c), as in
    docs/design.md; ``F.kl_div(log_q, log_p, log_target=True)`` computes exactly these terms in one
    call, and without a mask the batch mean and the weight are one multiplication."""
    s, m = _flatten(student_logits, mask)
    log_p, _ = _flatten(log_p, None)
    if s.shape != log_p.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(log_p.shape)} differ in shape")
    if s.dtype != torch.float32:
        s = s.float()
    log_q = F.log_softmax(s if temperature == 1 else s / temperature, dim=-1)
    if m is None:
        return F.kl_div(log_q, log_p, reduction="sum", log_target=True) * (weight / len(s))
    per_example = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return _mean(per_example, m) * weight


def soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over examples of KL(softmax(z_t/T) ‖ softmax(z_s/T)) (no T² factor)."""
    return _weighted_kl(student_logits, teacher_log_probs(teacher_logits, temperature), temperature, mask, 1.0)


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


def _check_kd(temperature: float, alpha: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


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
    _check_kd(temperature, alpha)
    log_p = teacher_log_probs(teacher_logits, temperature) if alpha > 0 else teacher_logits
    return kd_loss_from_log_probs(student_logits, log_p, labels, temperature, alpha, t_squared, mask)


def kd_loss_from_log_probs(
    student_logits: torch.Tensor,
    teacher_log_p: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    t_squared: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`kd_loss` given the teacher's side as ``teacher_log_p = teacher_log_probs(z_t, T)``:
    ``kd_loss(z_s, z_t, ...) == kd_loss_from_log_probs(z_s, teacher_log_probs(z_t, T), ...)``.

    For offline KD the teacher's log-probabilities are a constant table, so only the student's
    side is computed per step. A term whose weight is 0 is not computed (α = 1 reads no labels).
    """
    _check_kd(temperature, alpha)
    scale = temperature**2 if t_squared else 1.0
    loss = None
    if alpha > 0:
        loss = _weighted_kl(student_logits, teacher_log_p, temperature, mask, alpha * scale)
    if alpha < 1:
        if labels is None:
            raise ValueError("kd_loss needs labels when alpha < 1 (the CE term has weight 1 - alpha)")
        ce = cross_entropy(student_logits, labels, mask)
        if loss is None:
            return ce if alpha == 0 else (1 - alpha) * ce
        loss = loss + (1 - alpha) * ce
    return loss
