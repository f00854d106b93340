"""The language-model setup of the agreement scenario (``task.setup=lm``): next-token training
alone, with word-level KD or, for sequence-level KD, on a teacher's sentences
(:mod:`biaskd.run.teacher_sentences` makes them; :func:`sequence_level_module`), agreement scored at the verb position (the two verb forms'
log-probabilities, ordered like the labels), features before the verb. Details: ``docs/lm-setup.md``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from biaskd.data.base import PAD_ID, Split
from biaskd.errors import ConfigError
from biaskd.losses import cross_entropy
from biaskd.modules.classifier import ClassifierModule
from biaskd.modules.distill import FrozenTeacher, Schedule
from biaskd.objectives import Objective, Outputs, build_objective

log = logging.getLogger("biaskd")

def shift(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, mask) of next-token prediction on right-padded ids ``x``."""
    targets = x[:, 1:]
    return x[:, :-1], targets, targets != PAD_ID


# -- the verb position ------------------------------------------------------------------------------
@dataclass
class VerbTargets:
    """Where and what to read for each example: ``pos`` is the position whose next-token
    distribution scores the verb (``verb_pos − 1``); ``ids`` (n × 2) the singular and plural
    candidates' token ids, in label order."""

    pos: torch.Tensor
    ids: torch.Tensor

    @classmethod
    def of(cls, split: Split) -> "VerbTargets":
        meta = split.meta
        missing = [k for k in ("verb_pos", "correct_id", "wrong_id") if k not in meta]
        if missing:
            raise ConfigError(f"split {split.name!r} has no LM meta {missing}; build the task with setup=lm")
        correct = torch.as_tensor(np.asarray(meta["correct_id"]), dtype=torch.long)
        wrong = torch.as_tensor(np.asarray(meta["wrong_id"]), dtype=torch.long)
        singular = split.y == 0
        ids = torch.stack([torch.where(singular, correct, wrong), torch.where(singular, wrong, correct)], 1)
        pos = torch.as_tensor(np.asarray(meta["verb_pos"]), dtype=torch.long) - 1
        return cls(pos=pos, ids=ids)

    def __getitem__(self, index) -> "VerbTargets":
        return VerbTargets(self.pos[index], self.ids[index])

    def to(self, device) -> "VerbTargets":
        return VerbTargets(self.pos.to(device), self.ids.to(device))


def verb_logits(logits: torch.Tensor, verbs: VerbTargets) -> torch.Tensor:
    """(B, 2) log-probabilities of ``[singular, plural]`` form at each example's verb position,
    from next-token logits ``(B, L, V)`` (position t scores token t + 1)."""
    rows = torch.arange(len(logits), device=logits.device)
    logp = torch.log_softmax(logits[rows, verbs.pos].float(), dim=-1)
    return logp.gather(1, verbs.ids)


def verb_prefix(split: Split) -> Split:
    """``split`` with every input cut after the position before the verb (``verb_pos − 1``),
    so that ``features(x)`` (the state at the last non-pad token) is the pre-verb state — the
    input a classifier of the same prefix sees."""
    pos = torch.as_tensor(np.asarray(split.meta["verb_pos"]), dtype=torch.long)
    width = int(pos.max()) if len(pos) else 0
    x = split.x[:, :width].clone()
    x[torch.arange(width)[None, :] >= pos[:, None]] = PAD_ID
    return Split(name=split.name, x=x, y=split.y, ids=split.ids, meta=split.meta)


@dataclass
class LMScores:
    verb_logits: torch.Tensor  # (n, 2) float32, [singular, plural]
    nll_sum: float
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.n_tokens) if self.n_tokens else float("nan")


#: at most this many next-token logits (rows × positions × vocabulary) per forward when scoring:
#: a 1000-sentence eval batch over Linzen's vocabulary would otherwise hold gigabytes, and
#: 16 MB chunks stay in the allocator's cache (64 MB ones doubled CPU eval time in page faults)
SCORE_LOGITS = 1 << 22


def score_batch(model: nn.Module, x: torch.Tensor, verbs: VerbTargets) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(verb logits (B, 2), summed next-token NLL, number of target tokens)`` on one batch,
    run in row chunks of at most :data:`SCORE_LOGITS` logits, each trimmed to its longest row."""
    vocab = int(getattr(model, "vocab_size", 0) or 0)
    width = max(2, int((x != PAD_ID).sum(1).max()))
    step = max(1, SCORE_LOGITS // (width * vocab)) if vocab else len(x)
    out, nll_sum, n_tokens = [], x.new_zeros((), dtype=torch.float32), 0
    for i in range(0, len(x), step):
        rows = x[i : i + step]
        inputs, targets, mask = shift(rows[:, : max(2, int((rows != PAD_ID).sum(1).max()))])
        logits = model.lm_logits(inputs).float()
        out.append(verb_logits(logits, verbs[i : i + step]))
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        nll_sum = nll_sum + (token_nll * mask).sum()
        n_tokens += int(mask.sum())
    return torch.cat(out), nll_sum, n_tokens


@torch.no_grad()
def lm_scores(model: nn.Module, split: Split, batch_size: int = 1024) -> LMScores:
    """Verb-position 2-class logits and token NLL of ``model`` on ``split`` (one pass)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    verbs = VerbTargets.of(split)
    out, nll_sum, n_tokens = [], 0.0, 0
    for i in range(0, len(split), batch_size):
        logits, nll, n = score_batch(model, split.x[i : i + batch_size].to(device), verbs[i : i + batch_size].to(device))
        out.append(logits.cpu())
        nll_sum += float(nll)
        n_tokens += n
    model.train(was_training)
    logits = torch.cat(out) if out else torch.empty(0, 2)
    return LMScores(logits, nll_sum, n_tokens)


# -- the Lightning module ----------------------------------------------------------------------------
class LMModule(Schedule, ClassifierModule):
    """Next-token training of ``model`` alone (no teacher) or as a word-level-KD student of
    ``teacher``: a :class:`~biaskd.modules.distill.FrozenTeacher` (run on each batch), or a model
    trained alongside (``online=True``: it learns the LM objective and the student learns from its
    detached outputs). ``objective`` is the distillation objective at every non-pad position.
    ``valid_verbs`` (the valid split's :class:`VerbTargets`) adds ``valid/accuracy``, the agreement
    accuracy, to the validation log.

    ``sources`` and ``shares`` (no teacher; sequence-level KD on a split of teacher and gold
    sentences): per training row, 1 = teacher sequence, 0 = gold sentence, and the row's share of
    its sentence. The loss is then :func:`mixture_nll`, α (and its schedule) weighing teacher
    rows against gold rows.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: FrozenTeacher | nn.Module | None = None,
        online: bool = False,
        alpha: float = 1.0,
        alpha_schedule: str = "constant",
        final_alpha: float = 0.0,
        valid_verbs: VerbTargets | None = None,
        sources: torch.Tensor | None = None,
        shares: torch.Tensor | None = None,
        objective: Objective | None = None,
        **optim,
    ) -> None:
        super().__init__(model, **optim)
        if teacher is not None and sources is not None:
            raise ValueError("sources (sequence-level KD) and a teacher (word-level KD) exclude each other")
        if teacher is not None and objective is None:
            raise ValueError("word-level KD needs an objective")
        if online != (teacher is not None and not isinstance(teacher, FrozenTeacher)):
            raise ValueError("an online teacher is a model trained alongside; any other is a FrozenTeacher")
        self.online = online
        if online:
            self.teacher = teacher  # trained: part of state and optimizer
        else:
            self.frozen = teacher
        self.init_schedule(alpha, alpha_schedule, final_alpha)
        if objective is not None:
            self.objective = objective
        self.valid_verbs = valid_verbs
        # lookup tables by training-row index, like cached teacher logits: not module state
        self._sources = torch.as_tensor(sources, dtype=torch.long) if sources is not None else None
        if sources is not None and shares is None:
            shares = torch.ones(len(self._sources))
        self._shares = torch.as_tensor(shares, dtype=torch.float32) if sources is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_logits(x)

    def distill_loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        return self.objective(Outputs(logits), Outputs(teacher_logits), targets, self.current_alpha(), mask=mask)

    def frozen_teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        teacher = self.frozen.model_on(inputs)
        with torch.no_grad():
            return teacher.lm_logits(inputs)

    def loss_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets, mask = shift(batch["x"])
        logits = self.model.lm_logits(inputs)
        n = int(mask.sum())
        if self._sources is not None:
            idx = batch["idx"]
            if self._sources.device != idx.device:
                self._sources, self._shares = self._sources.to(idx.device), self._shares.to(idx.device)
            loss = mixture_nll(logits, targets, mask, self._sources[idx], self.current_alpha(), self._shares[idx])
        elif self.online:
            t_logits = self.teacher.lm_logits(inputs)
            teacher_loss = cross_entropy(t_logits, targets, mask)
            loss = self.distill_loss(logits, t_logits.detach(), targets, mask)
            self.log_train("train/teacher_loss", teacher_loss, batch_size=n)
            self.log_train("train/loss", loss, prog_bar=True, batch_size=n)
            return loss + teacher_loss
        elif self.frozen is not None:
            loss = self.distill_loss(logits, self.frozen_teacher_logits(inputs), targets, mask)
        else:
            loss = cross_entropy(logits, targets, mask)
        self.log_train("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = batch["x"]
        verbs = self.valid_verbs[batch["idx"].cpu()].to(x.device) if self.valid_verbs is not None else None
        if verbs is None:  # positions 0 stand in; only the token loss is logged
            verbs = VerbTargets(torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), 2, dtype=torch.long)).to(x.device)
        logits, nll_sum, n_tokens = score_batch(self.model, x, verbs)
        # batch_size = tokens, so the epoch mean is the token-weighted mean NLL
        self.log("valid/loss", nll_sum / max(1, n_tokens), batch_size=max(1, n_tokens))
        if self.valid_verbs is not None:
            acc = (logits.argmax(-1) == batch["y"]).float().mean()
            self.log("valid/accuracy", acc, batch_size=len(x), prog_bar=True)
        self.log_step_axis(self.global_step - 1, batch_size=len(x))  # after the epoch's last step

    def trainable_parameters(self):
        if self.online:
            return list(self.model.parameters()) + list(self.teacher.parameters())
        return self.model.parameters()


def mixture_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, sources: torch.Tensor,
                alpha: float, shares: torch.Tensor | None = None) -> torch.Tensor:
    """Sequence-level KD's α mix of teacher and gold sentences (Kim & Rush 2016),
    ``Σ_r w_r · NLL_r / Σ_r s_r · n_r`` over the batch's rows r: NLL_r the row's summed
    next-token NLL, n_r its target tokens, ``w_r`` = α for a teacher row (``sources`` 1) and
    1 − α for a gold row (0), ``s_r`` (``shares``, default 1) the row's share of its sentence:
    ½ when the sentence has a teacher and a gold row, 1 when it has one row. For paired rows of
    equal token counts this is ``α·mean NLL(teacher) + (1 − α)·mean NLL(gold)`` per token; at
    α = ½ the plain token mean. An input without gold label has only its teacher row, weighted α
    (as the CE term of word-level KD skips it)."""
    token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
    weights = torch.where(sources == 1, alpha, 1.0 - alpha).to(token_nll.dtype)
    shares = torch.ones_like(weights) if shares is None else shares.to(token_nll.dtype)
    tokens = (mask.sum(1).to(token_nll.dtype) * shares).sum()
    return (token_nll.masked_fill(~mask, 0.0) * weights[:, None]).sum() / tokens.clamp_min(1e-12)


def lm_module(cfg, model: nn.Module, teacher: nn.Module | None, data, online: bool = False, **optim) -> LMModule:
    """The :class:`LMModule` of an independent (``teacher=None``) or word-level-KD run (a trained
    teacher, or one trained alongside: ``online``). Sequence-level KD:
    :func:`sequence_level_module`."""
    valid_verbs = VerbTargets.of(data.valid)
    if teacher is None:
        return LMModule(model, valid_verbs=valid_verbs, **optim)
    if not online and cfg.distill.teacher_outputs == "cached":
        log.info("LM setup: per-token teacher logits are not cached (n x L x vocab); "
                 "running the frozen teacher on each batch instead (teacher_outputs=forward)")
    return LMModule(
        model,
        teacher=teacher if online else FrozenTeacher(teacher),
        online=online,
        objective=build_objective(cfg.distill, model, teacher),
        alpha=float(cfg.distill.alpha),
        alpha_schedule=cfg.distill.alpha_schedule,
        final_alpha=float(cfg.distill.final_alpha),
        valid_verbs=valid_verbs,
        **optim,
    )


# -- sequence-level KD: the student of a teacher's sentences (biaskd.run.teacher_sentences) -----------
def uses_gold(distill: Mapping[str, Any]) -> bool:
    """Whether α can fall below 1 during training, so gold sentences are trained on too."""
    alpha = float(distill.get("alpha", 1.0))
    if distill.get("alpha_schedule", "constant") != "constant":
        alpha = min(alpha, float(distill.get("final_alpha", 0.0)))
    return alpha < 1


def shares_of(fit: Split, distill: Mapping[str, Any]) -> torch.Tensor:
    """Each row's share of its sentence in :func:`biaskd.modules.lm.mixture_nll`: ½ for the
    teacher and the gold row of a labelled sentence when gold rows are trained on, else 1.
    Raises ValueError when ``fit`` was not built for ``distill``'s α."""
    if "source" not in fit.meta or "gold_label" not in fit.meta:
        raise ValueError("not a sequence-level KD split: build it with biaskd.run.teacher_sentences.sequence_level_split()")
    source, gold_label = np.asarray(fit.meta["source"]), np.asarray(fit.meta["gold_label"])
    paired = (gold_label >= 0) & uses_gold(distill)
    if int((source == 0).sum()) != int((paired & (source == 1)).sum()):
        raise ValueError("the sequence-level KD split does not match distill.alpha (it holds the gold sentences "
                         "exactly when alpha can fall below 1); build it from the same distill config")
    return torch.as_tensor(np.where(paired, 0.5, 1.0), dtype=torch.float32)


def sequence_level_module(cfg, model: nn.Module, data, fit: Split, **optim) -> LMModule:
    """The sequence-level KD student's :class:`LMModule`: no teacher (its sentences are ``fit``,
    built by :func:`biaskd.run.teacher_sentences.sequence_level_split`), next-token CE on them, and when gold sentences are
    trained on too the α mix of :func:`biaskd.modules.lm.mixture_nll`."""
    shares = shares_of(fit, cfg.distill)  # checks that fit was built for this alpha
    mixed = uses_gold(cfg.distill)  # else: plain next-token CE on the teacher's sentences
    return LMModule(
        model,
        alpha=float(cfg.distill.alpha),
        alpha_schedule=cfg.distill.alpha_schedule,
        final_alpha=float(cfg.distill.final_alpha),
        valid_verbs=VerbTargets.of(data.valid),
        sources=torch.as_tensor(np.asarray(fit.meta["source"]), dtype=torch.long) if mixed else None,
        shares=shares if mixed else None,
        **optim,
    )
