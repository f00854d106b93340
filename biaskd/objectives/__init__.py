"""Distillation objectives: *which* of the teacher's knowledge the student is asked to match.

Choose one by name with ``distill.objective``; its options live under ``distill.<name>``
(e.g. ``distill.relation.kind``). Every objective is mixed with the label loss the same way,

    L = α · term + (1 − α) · CE(y, z_s)          (batch mean; α may follow distill.alpha_schedule)

with z the logits (B, C) and f = ``features(x)`` (B, d) — the representation the analysis
compares — of student (s) and teacher (t). All terms are batch means:

``kd`` (default) — soft targets, Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a
    neural network". ``term = T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``; the whole loss is
    :func:`biaskd.losses.kd_loss` (DESIGN.md's definition). ``distill.t_squared=false`` drops T².

``logits_mse`` — logit regression, Ba & Caruana 2014, "Do deep nets really need to be deep?".
    ``term = 1/(B·C) · Σ_b Σ_c (z_s − z_t)²`` (mean over examples *and* classes). For zero-mean
    logits this is 2 × the T → ∞ limit of kd's term (Hinton et al. §2.1).

``hints`` — FitNets, Romero et al. 2015, "FitNets: hints for thin deep nets".
    ``term = 1/(B·d_t) · Σ_b ‖W f_s + c − f_t‖²`` with a learned linear regressor
    ``W ∈ R^{d_t×d_s}``, ``c`` mapping student → teacher (FitNets' direction: the teacher's
    representation is a fixed target), trained with the student and saved in its checkpoints.
    The hint is the final representation ``features(x)``, not a middle layer as in FitNets.

``relation`` — relational KD: match the batch's example-by-example structure, so student and
    teacher may use different coordinates and sizes. ``distill.relation.kind``:

    - ``rsa`` (default), the paper authors' representational-similarity loss (Abnar et al.
      2020, ``rep_loss`` in their code): with ``S = N Nᵀ`` the cosine-similarity matrix of the
      L2-normalised rows N of f, ``term = 1 − 1/B · Σ_i cos(S_s[i,:], S_t[i,:])``;
    - ``rsa_mse``: ``term = 1/B² · Σ_ij (S_s − S_t)²_ij``;
    - ``rkd``: RKD distance loss, Park et al. 2019, "Relational knowledge distillation":
      ``ψ(i,j) = ‖f_i − f_j‖ / μ`` with μ the mean distance over pairs i < j,
      ``term = mean_{i<j} Huber_δ=1(ψ_s(i,j) − ψ_t(i,j))`` (Park et al.'s code averages over all
      B² entries including the zero diagonal, i.e. × (B−1)/B).

``hints`` and ``relation`` reach only the encoder, not the classifier head, so they need
α < 1 (validation rejects a constant α = 1). They read the teacher's features: with
``teacher_outputs=cached`` these are computed once on the training set alongside the logits
(``teacher_cache/`` of the teacher's run dir); with ``forward``/``online`` on each batch. The
student's features and logits come from one forward (``model.features_and_logits``);
``kd`` and ``logits_mse`` keep the plain ``model(x)`` step.

``seqkd`` — sequence-level KD, Kim & Rush 2016, "Sequence-level knowledge distillation"; the LM
    setup only (``task.setup=lm``; a ConfigError elsewhere). Not a term on the batch's outputs:
    the student learns next-token cross-entropy on sentences the teacher *generates* (beam search
    of width ``distill.seqkd.beam_width``, 1 = greedy) from a prompt of each training sentence
    (``prompt=verb``: the tokens before the verb; ``verb=candidates``: at the verb position
    only the sentence's two verb forms, so the teacher decides the number). With ŷ the teacher's
    sentence — its best beam candidate (``mix=teacher``, Seq-KD) or the candidate closest to the
    gold sentence y by smoothed sentence BLEU (``mix=interpolate``, Seq-Inter) — the loss per
    training sentence is ``α · NLL(ŷ) + (1 − α) · NLL(y)``: Kim & Rush's mixture of teacher and
    gold data with its mode approximation; at α = 1 (default) the student never sees the gold
    sentences. No zero-loss identity holds (a student equal to its teacher keeps the teacher's
    own NLL of its sentences). Details, batching of the mix and the cache:
    :mod:`biaskd.modules.seqkd`.

Adding an objective = one file with an :class:`Objective` subclass + one line in ``OBJECTIVES``;
from outside the repository, ``distill.objective`` takes the subclass's import path
(``mypkg.objectives.Cosine``; its options under ``distill.<its name>``; README, "Your own model or
objective").
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from biaskd.errors import ConfigError
from biaskd.objectives.base import Objective, Outputs, features_and_logits, mix
from biaskd.objectives.hints import Hints
from biaskd.objectives.kd import SoftTargets
from biaskd.objectives.logits_mse import LogitsMSE
from biaskd.objectives.relation import Relation
from biaskd.objectives.seqkd import SequenceLevelKD, not_lm_message

#: objectives that are a loss term on the batch's outputs (built by :func:`build_objective`)
OUTPUT_OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (SoftTargets, LogitsMSE, Hints, Relation)}
#: every value of ``distill.objective``: the output objectives and sequence-level KD, which makes
#: the student's training data instead (:mod:`biaskd.modules.seqkd`)
OBJECTIVES: dict[str, type] = {**OUTPUT_OBJECTIVES, SequenceLevelKD.name: SequenceLevelKD}

__all__ = ["OBJECTIVES", "OUTPUT_OBJECTIVES", "Objective", "Outputs", "build_objective", "check_config",
           "features_and_logits", "mix", "objective_class", "objective_options"]


def objective_class(distill: Mapping[str, Any]) -> type:
    """The class of the objective a ``distill`` config names (``kd`` when it names none)."""
    name = distill.get("objective") or "kd"
    if isinstance(name, str) and name in OBJECTIVES:
        return OBJECTIVES[name]
    if isinstance(name, str) and "." in name:  # the user's own: an importable Objective subclass (pkg.module.Class)
        return _own_objective(name)
    raise ConfigError(f"config key 'distill.objective' must be one of {', '.join(OBJECTIVES)}, or the import "
                      f"path of an Objective subclass (package.module.Class); got {name!r}")


def _own_objective(path: str) -> type[Objective]:
    import hydra.utils

    try:
        cls = hydra.utils.get_class(path)
    except Exception as exc:
        raise ConfigError(f"config key 'distill.objective': cannot import {path!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Objective) and isinstance(getattr(cls, "name", None), str)):
        raise ConfigError(f"config key 'distill.objective': {path} is not a subclass of biaskd.objectives.Objective "
                          f"with a name")
    return cls


def check_config(distill: Mapping[str, Any]) -> None:
    """Raise one ConfigError, naming the key, for an unknown objective or option, or for an
    objective that cannot train the classifier head at α = 1."""
    cls = objective_class(distill)
    options = distill.get(cls.name)
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"config key 'distill.{cls.name}' must be a mapping of options, got {options!r}")
    cls.check_options(options or {}, f"distill.{cls.name}")
    if getattr(cls, "lm_only", False):
        setup = _task_setup(distill)
        if setup is not None and setup != "lm":
            raise ConfigError(not_lm_message(setup))
    if not cls.trains_logits:
        alpha = distill.get("alpha", 1.0)
        final = alpha if distill.get("alpha_schedule", "constant") == "constant" else distill.get("final_alpha", 0.0)
        if alpha == 1 and final == 1:
            raise ConfigError(
                f"config key 'distill.alpha' must be < 1 for objective {cls.name!r}: its term does not reach the "
                f"classifier head, which only the (1 - alpha) cross-entropy term trains"
            )


def _task_setup(distill: Mapping[str, Any]) -> str | None:
    """The ``task.setup`` of the run config ``distill`` belongs to (``classification`` when the task
    has none), or None for a detached ``distill`` mapping."""
    if not isinstance(distill, DictConfig):
        return None
    try:
        task = OmegaConf.select(distill, "..task", default=None)
    except OmegaConfBaseException:  # no parent config
        return None
    return None if task is None else str(task.get("setup") or "classification")


def build_objective(distill: Mapping[str, Any], student: nn.Module, teacher: nn.Module | None = None) -> Objective:
    """The objective ``distill`` (the ``distill`` config node) asks for, sized for ``student``
    and ``teacher`` (their ``feature_dim``)."""
    cls = objective_class(distill)
    if not issubclass(cls, Objective):
        raise ConfigError(f"distill.objective={cls.name} is not a loss on the model's outputs; "
                          f"it trains through biaskd.modules.seqkd")
    if cls.needs_features:
        for role, model in (("student", student), ("teacher", teacher)):
            if model is not None and not hasattr(model, "features_and_logits"):
                raise ConfigError(
                    f"distill.objective={cls.name} needs features: the {role} model {type(model).__name__} "
                    f"has no features_and_logits(x)"
                )
    return cls.from_config(
        distill, getattr(student, "feature_dim", None), getattr(teacher, "feature_dim", None) if teacher else None
    )


def objective_options(distill: Mapping[str, Any]) -> dict[str, Any]:
    """The effective options of the objective ``distill`` names, defaults filled in."""
    return objective_class(distill).config_options(distill)
