"""Prediction agreement between two models on the same examples.

Accuracy alone cannot tell whether a distilled student solves the task *like* its teacher;
these measures compare the two models example by example:

* :func:`top1_agreement` -- how often the two predict the same class;
* :func:`js_divergence` -- how close their whole output distributions are;
* :func:`error_consistency` -- whether they are right and wrong on the same examples beyond
  what their accuracies alone predict (Cohen's kappa, Geirhos et al. 2020).
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from biaskd.errors import ArtifactError
from biaskd.record.schema import SplitOutputs
# one definition for the training driver (which logs them per run) and the analysis
from biaskd.pairwise import LN2, as_array as _as_array, from_logits, js_divergence, top1_agreement

from analysis.runs import Run, order_splits

__all__ = ["LN2", "from_logits", "top1_agreement", "js_divergence", "error_consistency", "agreement_metrics",
           "agreement_table", "check_same_examples", "AGREEMENT_COLUMNS"]


def error_consistency(correct_a, correct_b) -> float:
    """Cohen's kappa on per-example correctness (Geirhos et al. 2020).

    ``c_obs`` = fraction of examples where both are right or both are wrong;
    ``c_exp = p_a p_b + (1 - p_a)(1 - p_b)`` is what two independent models with accuracies
    ``p_a, p_b`` would reach; ``kappa = (c_obs - c_exp) / (1 - c_exp)``: 0 = no more shared
    errors than chance, 1 = identical error pattern, negative = systematically different.

    Degenerate case: ``c_exp = 1`` happens only when both models are right on every example or
    both wrong on every example. Then ``c_obs = 1`` too and kappa is 0/0: there is no error
    pattern to compare, so the result is ``NaN`` (not 1), and tables show it as missing.
    """
    a = _as_array(correct_a).astype(bool).ravel()
    b = _as_array(correct_b).astype(bool).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"expected two equal-length non-empty vectors, got {a.shape} and {b.shape}")
    pa, pb = a.mean(), b.mean()
    if np.isclose(pa * pb + (1 - pa) * (1 - pb), 1.0, rtol=0, atol=1e-12):  # c_exp = 1: no error pattern
        return math.nan
    return float(cohen_kappa_score(a, b, labels=[False, True]))


def check_same_examples(a: SplitOutputs, b: SplitOutputs) -> None:
    """Raise :class:`ArtifactError` unless ``a`` and ``b`` hold the same examples in order."""
    if a.ids.shape != b.ids.shape or not np.array_equal(a.ids, b.ids):
        raise ArtifactError(
            f"runs {a.run} and {b.run}: split {a.split!r} example ids differ "
            f"(n={a.n} vs n={b.n}); outputs must cover the same examples in the same order"
        )
    if not np.array_equal(a.labels, b.labels):
        raise ArtifactError(
            f"runs {a.run} and {b.run}: split {a.split!r} has the same ids but different labels"
        )
    if a.logits.shape[1] != b.logits.shape[1]:
        raise ArtifactError(
            f"runs {a.run} and {b.run}: {a.logits.shape[1]} vs {b.logits.shape[1]} classes"
        )


def agreement_metrics(student: SplitOutputs, teacher: SplitOutputs, mask: np.ndarray | None = None) -> dict:
    """All agreement measures of ``student`` vs ``teacher`` (optionally on ``mask``)."""
    check_same_examples(student, teacher)
    ps, pt = student.probs, teacher.probs
    cs, ct = student.correct, teacher.correct
    if mask is not None:
        ps, pt, cs, ct = ps[mask], pt[mask], cs[mask], ct[mask]
    return {
        "n": int(len(cs)),
        "top1_agreement": top1_agreement(ps, pt),
        "js_divergence": js_divergence(ps, pt),
        "error_consistency": error_consistency(cs, ct),
        "student_accuracy": float(cs.mean()),
        "teacher_accuracy": float(ct.mean()),
    }


AGREEMENT_COLUMNS = [
    "student",
    "teacher",
    "task",
    "model",
    "role",
    "distill",
    "objective",
    "teacher_model",
    "reference_model",
    "seed",
    "alpha",
    "temperature",
    "split",
    "group",
    "group_value",
    "n",
    "top1_agreement",
    "js_divergence",
    "error_consistency",
    "student_accuracy",
    "teacher_accuracy",
]


def _pairs(runs, teacher) -> list[tuple[Run, Run]]:
    if isinstance(runs, Run):
        runs = [runs]
    pairs = []
    for item in runs:
        if isinstance(item, tuple):
            pairs.append(item)
            continue
        t = teacher if teacher is not None else item.teacher
        if t is None:
            raise ArtifactError(f"run {item.run_id} names no teacher and none was given")
        pairs.append((item, t))
    return pairs


def agreement_table(
    runs: Run | Iterable[Run | tuple[Run, Run]],
    teacher: Run | None = None,
    *,
    splits: Sequence[str] | None = None,
    by: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Agreement of each student with a reference model, per eval split.

    ``runs`` are student runs compared with ``teacher`` (or, if it is None, with the teacher
    each run names), or explicit ``(student, reference)`` pairs -- e.g. an independently
    trained student vs the teacher, the baseline a distilled student should beat.
    ``splits`` defaults to the splits both runs have outputs for. ``by`` names metadata keys
    (``attractors``, ``distance``, ``severity``): each adds one row per value of that key
    (``group``/``group_value``) next to the overall row (``group == "all"``); splits without
    the key contribute only the overall row.
    """
    keys = [by] if isinstance(by, str) else list(by or [])
    rows = []
    for student, ref in _pairs(runs, teacher):
        if student.task != ref.task:
            raise ArtifactError(f"runs {student.run_id} ({student.task}) and {ref.run_id} ({ref.task}) are different tasks")
        use = splits if splits is not None else order_splits(
            set(student.output_splits()) & set(ref.output_splits())
        )
        if splits is None and not use:
            warnings.warn(f"runs {student.run_id} and {ref.run_id} share no output splits", stacklevel=2)
        base = {
            "student": student.run_id,
            "teacher": ref.run_id,
            "task": student.task,
            "model": student.model,
            "role": student.role,
            "distill": student.distill,
            "objective": student.objective,
            "teacher_model": student.teacher_model,
            "reference_model": ref.model,
            "seed": student.seed,
            "alpha": student.alpha,
            "temperature": student.temperature,
        }
        for split in use:
            so, to = student.outputs(split), ref.outputs(split)
            rows.append({**base, "split": split, "group": "all", "group_value": None,
                         **agreement_metrics(so, to)})
            for key in keys:
                if key not in so.meta:
                    continue
                values = so.meta[key]
                if key in to.meta and not np.array_equal(values, to.meta[key]):
                    raise ArtifactError(
                        f"runs {student.run_id} and {ref.run_id}: split {split!r} metadata "
                        f"{key!r} differs for the same example ids"
                    )
                for v in np.unique(values):
                    rows.append({**base, "split": split, "group": key, "group_value": v.item(),
                                 **agreement_metrics(so, to, mask=values == v)})
    frame = pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
    # keep integer group values (attractor counts) as they are, next to None for "all"
    frame["group_value"] = pd.Series([r["group_value"] for r in rows], dtype=object)
    return frame
