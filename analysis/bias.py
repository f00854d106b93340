"""An inductive bias measured as a bias, not as an accuracy.

A CNN's translation bias shows in *how* it answers: its prediction for a digit should not
change when the digit moves; an LSTM's hierarchical bias shows in how little its agreement
accuracy falls as attractors are added. These measures ask whether a student acquired that
behaviour from its teacher, beside how often it copies the teacher's answers and what the
teacher's soft targets actually carried. Array functions do the arithmetic; the ``*_table`` /
``*_frame`` wrappers read :class:`analysis.runs.Run` objects. Top-1 agreement
(:mod:`analysis.agreement`) and the transfer ratio (:mod:`analysis.tables`) are reused, not redefined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from biaskd.data.ood import OOD_TRANSFORMS
from biaskd.errors import ArtifactError
from biaskd.metrics import teacher_signal

from analysis.agreement import _as_array, agreement_table
from analysis.runs import FRAME_COLUMNS, Run, run_record
from analysis.tables import split_severity, transfer_ratio

SHIFT_FAMILY = "translated"


def _predictions(x) -> np.ndarray:
    """Class predictions from (n,) predictions or (n, C) logits / probabilities."""
    a = _as_array(x)
    if a.ndim == 2:
        return np.argmax(a, axis=1)
    if a.ndim == 1:
        return a.astype(np.int64)
    raise ValueError(f"expected (n,) predictions or (n, C) scores, got shape {a.shape}")


def _runs(runs: Run | Iterable[Run]) -> list[Run]:
    return [runs] if isinstance(runs, Run) else list(runs)


# -- vision: prediction consistency under shift ----------------------------------------------------
def prediction_consistency(clean, moved, clean_ids=None, moved_ids=None) -> float:
    """Fraction of examples whose predicted class is unchanged by a transformation.

    ``clean`` / ``moved`` are predictions (n,) or scores (n, C) on the original and the
    transformed inputs. With ids, every moved example is matched to the clean example with the
    same id (the OOD splits are the test images transformed, with the test ids); without ids
    the two must already be in the same order. Labels play no part: a model whose prediction
    ignores its input scores 1.
    """
    a, b = _predictions(clean), _predictions(moved)
    if (clean_ids is None) != (moved_ids is None):
        raise ValueError("pass ids for both sets or for neither")
    if clean_ids is not None:
        cid, mid = _as_array(clean_ids).ravel(), _as_array(moved_ids).ravel()
        if cid.shape != a.shape or mid.shape != b.shape:
            raise ValueError(f"ids {cid.shape}/{mid.shape} do not match predictions {a.shape}/{b.shape}")
        if len(np.unique(cid)) != len(cid):
            raise ValueError("clean ids are not unique")
        order = np.argsort(cid, kind="stable")
        pos = np.searchsorted(cid, mid, sorter=order)
        pos = np.clip(pos, 0, len(cid) - 1)
        found = cid[order[pos]] == mid
        if not found.all():
            raise ValueError(f"{int((~found).sum())} transformed example id(s) have no clean example, "
                             f"e.g. {mid[~found][:3].tolist()}")
        a = a[order[pos]]
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"expected two equal-length non-empty sets, got {a.shape} and {b.shape}")
    return float(np.mean(a == b))


def _shift_px(out, severity: int | None, family: str) -> int | None:
    """Pixels shifted per axis: |meta shift_x| (one value per split), else the severity's level."""
    sx, sy = out.meta.get("shift_x"), out.meta.get("shift_y")
    if sx is not None:
        values = set(np.abs(sx).tolist()) | (set(np.abs(sy).tolist()) if sy is not None else set())
        if len(values) == 1:
            return int(values.pop())
    if family != SHIFT_FAMILY:
        return None
    levels = OOD_TRANSFORMS[SHIFT_FAMILY].levels
    return int(levels[severity - 1]) if severity is not None and 1 <= severity <= len(levels) else None


def shift_consistency_table(runs: Run | Iterable[Run], clean_split: str = "test",
                            family: str = SHIFT_FAMILY) -> pd.DataFrame:
    """:func:`prediction_consistency` of each run between ``clean_split`` and every split of
    ``family`` it has outputs for (``translated``, ``translated_s1`` ... ``_s5``), matched by
    example id. Columns: the run's (:func:`analysis.runs.run_record`), ``split``, ``severity``,
    ``shift_px`` (c: pixels in x and in y), ``n``, ``consistency``, ``accuracy`` (on the moved set).

    The moved split must be the clean examples transformed (MNIST's OOD splits keep the test ids
    and labels); a split whose ids name other examples — its labels then disagree with the clean
    labels of the same ids, e.g. the toy task's ``shifted`` — raises :class:`ArtifactError`.
    """
    rows = []
    for run in _runs(runs):
        splits = [s for s in run.output_splits() if split_severity(s)[0] == family]
        if not splits:
            continue
        clean = run.outputs(clean_split)
        rec = run_record(run)
        for split in splits:
            out = run.outputs(split)
            try:
                same = prediction_consistency(clean.labels, out.labels, clean.ids, out.ids) == 1.0
            except ValueError as exc:
                raise ArtifactError(f"run {run.run_id}: split {split!r} vs {clean_split!r}: {exc}") from None
            if not same:
                raise ArtifactError(f"run {run.run_id}: split {split!r} is not a transformed {clean_split!r} "
                                    f"(labels differ for the same example ids)")
            sev = out.meta.get("severity")
            severity = int(sev[0]) if sev is not None and len(set(sev.tolist())) == 1 else split_severity(split)[1]
            rows.append({**rec, "split": split, "severity": severity, "shift_px": _shift_px(out, severity, family),
                         "n": out.n,
                         "consistency": prediction_consistency(clean.logits, out.logits, clean.ids, out.ids),
                         "accuracy": float(out.correct.mean())})
    return pd.DataFrame(rows)


# -- agreement with the teacher --------------------------------------------------------------------
def teacher_agreement_table(runs: Run | Iterable[Run | tuple[Run, Run]], teacher: Run | None = None,
                            splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Top-1 agreement with the teacher per eval split: the ``group == "all"`` rows of
    :func:`analysis.agreement.agreement_table` (same arguments; pass ``(independent, teacher)``
    pairs for the baseline of students that name no teacher)."""
    table = agreement_table(runs, teacher, splits=splits)
    return table[table["group"] == "all"].reset_index(drop=True)


# -- language: accuracy drop with attractors -------------------------------------------------------
def attractor_drop(correct, attractors, homogeneous=None, ks: Sequence[int] = (1, 2, 3, 4)) -> dict[int, float]:
    """``{k: acc(0 attractors) − acc(k attractors)}`` from per-example correctness, binned as
    A-accuracy bins them (:func:`biaskd.metrics.a_accuracy`: only homogeneous examples when
    ``homogeneous`` is given; unknown counts < 0 ignored). NaN where either bin is empty. Smaller = agreement less disturbed by
    attractors, the hierarchical bias the LSTM is credited with."""
    from biaskd.metrics import a_accuracy  # imported here: it brings torchmetrics

    binned = a_accuracy(np.asarray(correct), np.asarray(attractors), homogeneous, max_attractors=max(ks))
    base = binned.per_bin.get(0, math.nan)
    return {int(k): float(base - binned.per_bin.get(int(k), math.nan)) for k in ks}


def attractor_drop_table(runs: Run | Iterable[Run], clean_split: str = "test") -> pd.DataFrame:
    """Per run and k: accuracy on attractor-free examples minus accuracy on ``attractors_k``,
    from metrics.json. The attractor-free accuracy is the 0-attractor bin of ``clean_split``
    (``accuracy_by_attractors["0"]``, homogeneous examples) where counts are known (grammar,
    TSV); Linzen's numpred data has no 0-attractor count, so there it is ``clean_split``'s
    accuracy over all examples — ``baseline`` says which was used."""
    rows = []
    for run in _runs(runs):
        ks = sorted(int(s.split("_", 1)[1]) for s in run.splits
                    if s.startswith("attractors_") and s.split("_", 1)[1].isdigit())
        if not ks:
            continue
        clean = run.metrics["splits"].get(clean_split)
        if clean is None:
            raise ArtifactError(f"run {run.run_id}: metrics.json has no split {clean_split!r}")
        by_k = clean.get("accuracy_by_attractors") or {}
        if "0" in by_k:
            base, base_name = float(by_k["0"]), f"{clean_split} 0-attractor accuracy"
        else:
            base, base_name = run.metric(clean_split, "accuracy"), f"{clean_split} accuracy"
        rec = run_record(run)
        for k in ks:
            acc_k = run.metric(f"attractors_{k}", "accuracy")
            rows.append({**rec, "split": f"attractors_{k}", "attractors": k, "accuracy_0": base,
                         "accuracy_k": acc_k, "drop": base - acc_k, "baseline": base_name})
    return pd.DataFrame(rows)


# -- the transferred share -------------------------------------------------------------------------
def transferred_share(m_kd, m_indep, m_teacher, min_gap: float = 1e-9):
    """``(m_KD − m_indep) / (m_teacher − m_indep)``: :func:`analysis.tables.transfer_ratio`
    elementwise (scalars or arrays, e.g. one value per severity). 1 = the student behaves like
    its teacher, 0 = like the independent student; NaN (never ±inf) where the teacher and the
    independent student differ by at most ``min_gap``."""
    out = np.vectorize(transfer_ratio, otypes=[float])(m_kd, m_indep, m_teacher, min_gap)
    return float(out) if out.ndim == 0 else out


# -- what the teacher gave -------------------------------------------------------------------------
def teacher_signal_table(run: Run, temperature: float | None = None,
                         splits: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`teacher_signal` of a teacher on each of its eval splits (saved outputs).

    ``run`` is the teacher, or a student: then its teacher at the student's temperature (the
    one its soft targets were made at) unless ``temperature`` is given.
    """
    teacher = run.teacher or run
    if temperature is None:
        temperature = run.temperature if run.teacher is not None else None
    if temperature is None:
        raise ValueError(f"run {run.run_id}: no distillation temperature recorded; pass temperature=")
    rows = []
    for split in (splits if splits is not None else teacher.output_splits()):
        out = teacher.outputs(split)
        rows.append({"teacher": teacher.run_id, "teacher_model": teacher.model, "seed": teacher.seed,
                     "split": split, **teacher_signal(out.logits, out.labels, temperature)})
    return pd.DataFrame(rows)


# -- all of it as a tidy frame ---------------------------------------------------------------------
def bias_frame(runs: Run | Iterable[Run], clean_split: str = "test") -> pd.DataFrame:
    """The bias metrics in :func:`analysis.runs.runs_frame`'s shape (one row per run × split ×
    metric), so :func:`analysis.tables.summarize` gives them means ± CI over seeds and
    :func:`analysis.tables.transfer_table` their transferred share. Metrics:
    ``shift_consistency`` (``translated*`` splits), ``attractor_drop`` (``attractors_k``
    splits) and ``teacher_agreement`` (every split, runs that name a teacher; an independent
    student names none, so its baseline comes from :func:`teacher_agreement_table` with
    explicit ``(independent, teacher)`` pairs)."""
    runs = _runs(runs)
    records = {r.run_id: run_record(r) for r in runs}
    rows: list[dict] = []

    def add(frame: pd.DataFrame, column: str, metric: str, id_column: str = "run") -> None:
        for r in frame.to_dict("records"):
            rows.append({**records[r[id_column]], "split": r["split"], "metric": metric, "value": float(r[column])})

    add(shift_consistency_table(runs, clean_split), "consistency", "shift_consistency")
    add(attractor_drop_table(runs, clean_split), "drop", "attractor_drop")
    students = [r for r in runs if r.teacher_path is not None]
    if students:
        add(teacher_agreement_table(students), "top1_agreement", "teacher_agreement", id_column="student")
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    frame["value"] = frame["value"].astype(float)
    return frame


# -- bias measures: what a scenario's declaration (biaskd.scenario) names ---------------------------
def nan_mean(values: Iterable[float]) -> float:
    """Mean of the values that are not None or NaN (NaN when none is left)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _family_mean(accuracy: dict[str, float], family: str) -> float:
    return nan_mean(v for s, v in accuracy.items() if split_severity(s)[0] == family)


def agreement_with(run: Run, teacher: Run | None, splits: Sequence[str], column: str = "top1_agreement") -> float:
    """Mean over ``splits`` (those both runs saved) of an :func:`analysis.agreement.agreement_metrics`
    column between ``run`` and ``teacher``; NaN without a teacher, 1 (or 0 for JS) for the teacher
    itself."""
    from analysis.agreement import agreement_metrics

    if teacher is None:
        return math.nan
    if teacher.path == run.path:
        return 0.0 if column == "js_divergence" else 1.0
    have = set(run.output_splits()) & set(teacher.output_splits())
    return nan_mean(agreement_metrics(run.outputs(s), teacher.outputs(s))[column] for s in splits if s in have)


def probe_cka(run: Run, teacher: Run | None) -> float:
    """Linear CKA of the run's and the teacher's final probe-set features (NaN without a teacher
    or when their probe sets differ)."""
    from analysis.similarity import linear_cka

    if teacher is None:
        return math.nan
    if teacher.path == run.path:
        return 1.0
    a, b = run.features(), teacher.features()
    if a.ids.shape != b.ids.shape or not np.array_equal(a.ids, b.ids):
        return math.nan
    return float(linear_cka(a.features, b.features))


def _eval_splits(run: Run) -> list[str]:
    return [s for s in run.output_splits() if s != "test"]


def generic_values(run: Run, teacher: Run | None = None) -> dict[str, float]:
    """What any scenario is measured by: accuracy in and out of the test set, agreement, JS and
    representation similarity with the teacher."""
    acc = {s: run.metric(s, "accuracy") for s in run.splits}
    evals = _eval_splits(run)
    return {"test": acc.get("test", math.nan),
            "eval_mean": nan_mean(v for s, v in acc.items() if s != "test"),
            "teacher_agreement_eval": agreement_with(run, teacher, evals),
            "teacher_js_eval": agreement_with(run, teacher, evals, "js_divergence"),
            "teacher_cka_probe": probe_cka(run, teacher)}


def shift_values(run: Run, teacher: Run | None = None) -> dict[str, float]:
    """Vision-style bias: accuracy per OOD family and prediction consistency under shift."""
    acc = {s: run.metric(s, "accuracy") for s in run.splits}
    families = sorted({split_severity(s)[0] for s in acc if s != "test"})
    shift = shift_consistency_table([run])
    evals = _eval_splits(run)
    return {"test": acc.get("test", math.nan),
            "ood_mean": nan_mean(_family_mean(acc, f) for f in families),
            "translated": _family_mean(acc, SHIFT_FAMILY), "scaled": _family_mean(acc, "scaled"),
            "shift_consistency": float(shift["consistency"].mean()) if len(shift) else math.nan,
            "teacher_agreement_ood": agreement_with(run, teacher, evals),
            "teacher_js_ood": agreement_with(run, teacher, evals, "js_divergence"),
            "teacher_cka_probe": probe_cka(run, teacher)}


def attractor_values(run: Run, teacher: Run | None = None) -> dict[str, float]:
    """Agreement-style bias: accuracy per attractor count, and its drop from attractor-free."""
    acc = {s: run.metric(s, "accuracy") for s in run.splits}
    attractors = [f"attractors_{k}" for k in (1, 2, 3, 4)]
    drops = attractor_drop_table([run])
    four = drops[drops["attractors"] == 4]["drop"] if len(drops) else []
    return {"test": acc.get("test", math.nan),
            "a_accuracy": nan_mean(acc.get(s, math.nan) for s in attractors),
            "test_deep": acc.get("test_deep", math.nan),
            "attractor_drop_4": float(four.iloc[0]) if len(four) else math.nan,
            "teacher_agreement_attractors": agreement_with(run, teacher, attractors),
            "teacher_js_attractors": agreement_with(run, teacher, attractors, "js_divergence"),
            "teacher_cka_probe": probe_cka(run, teacher)}


def shift_curve(run: Run) -> list[dict]:
    """A teacher's own bias against shift size c (c = 0: the test set): accuracy and consistency."""
    rows = [{"x": 0, "measure": "accuracy", "value": run.metric("test", "accuracy")},
            {"x": 0, "measure": "consistency", "value": 1.0}]
    for _, row in shift_consistency_table([run]).iterrows():
        rows += [{"x": int(row["shift_px"]), "measure": "accuracy", "value": row["accuracy"]},
                 {"x": int(row["shift_px"]), "measure": "consistency", "value": row["consistency"]}]
    return rows


def attractor_curve(run: Run) -> list[dict]:
    """A teacher's accuracy per attractor count (0 where the counts are known)."""
    by_k = (run.metrics["splits"].get("test") or {}).get("accuracy_by_attractors") or {}
    rows = [{"x": 0, "measure": "accuracy", "value": float(by_k["0"])}] if "0" in by_k else []
    return rows + [{"x": k, "measure": "accuracy", "value": run.metric(f"attractors_{k}", "accuracy")}
                   for k in (1, 2, 3, 4) if f"attractors_{k}" in run.splits]


@dataclass(frozen=True)
class BiasMeasure:
    """How a scenario's bias is measured: per-run ``values(run, teacher)`` (``metrics`` says what
    each means, in table order), a teacher's own ``curve(run)`` against ``x_label``, the
    metrics where lower is better, and how the reference tables group the eval splits
    (``layout``: ``families``, every split other than test an OOD family, a severity sweep by its
    mean; ``attractors``: the ``attractors_k`` splits; :class:`analysis.scenario.Layout`)."""

    metrics: dict[str, str]
    values: Callable[[Run, Run | None], dict[str, float]]
    curve: Callable[[Run], list[dict]] | None = None
    x_label: str = ""
    lower_is_better: frozenset[str] = frozenset()
    layout: str = "families"


_SIMILARITY = {"teacher_cka_probe": "linear CKA with the teacher's features on the probe set"}
MEASURES: dict[str, BiasMeasure] = {
    "shift": BiasMeasure(
        {"ood_mean": "mean OOD accuracy (mean over families of the mean over severities 1-5)",
         "translated": "accuracy on translated digits (mean over shifts of 1-5 px)",
         "scaled": "accuracy on scaled digits (mean over severities 1-5)",
         "test": "test accuracy (in distribution)",
         "shift_consistency": "share of test digits whose predicted class is unchanged when shifted (mean over 1-5 px)",
         "teacher_agreement_ood": "top-1 agreement with the teacher (mean over the OOD splits)",
         "teacher_js_ood": "Jensen-Shannon divergence from the teacher (mean over the OOD splits)", **_SIMILARITY},
        shift_values, shift_curve, "shift c (px)", frozenset({"teacher_js_ood"})),
    "attractors": BiasMeasure(
        {"a_accuracy": "A-accuracy: mean accuracy over attractors_1..4",
         "attractor_drop_4": "accuracy on attractor-free test examples minus accuracy with 4 attractors",
         "test": "test accuracy (in distribution)",
         "test_deep": "accuracy on sentences deeper than any trained on",
         "teacher_agreement_attractors": "top-1 agreement with the teacher (mean over attractors_1..4)",
         "teacher_js_attractors": "Jensen-Shannon divergence from the teacher (mean over attractors_1..4)",
         **_SIMILARITY},
        attractor_values, attractor_curve, "attractors", frozenset({"attractor_drop_4", "teacher_js_attractors"}),
        layout="attractors"),
    "generic": BiasMeasure(
        {"test": "test accuracy (in distribution)",
         "eval_mean": "mean accuracy over the eval splits other than test",
         "teacher_agreement_eval": "top-1 agreement with the teacher (mean over the eval splits other than test)",
         "teacher_js_eval": "Jensen-Shannon divergence from the teacher (mean over the eval splits other than test)",
         **_SIMILARITY},
        generic_values, lower_is_better=frozenset({"teacher_js_eval"})),
}


def bias_measure(name: str) -> BiasMeasure:
    """A registered measure, or a user's own named ``package.module:object``: a
    :class:`BiasMeasure`, or a function ``(run, teacher) -> {metric: value}`` (its metrics are
    then described by their names)."""
    if name in MEASURES:
        return MEASURES[name]
    if ":" not in name:
        raise ArtifactError(f"unknown bias measure {name!r}: use one of {', '.join(MEASURES)} or package.module:object")
    import importlib

    module, _, attr = name.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ArtifactError(f"bias measure {name!r} cannot be imported: {exc}") from None
    if isinstance(obj, BiasMeasure):
        return obj
    if callable(obj):
        return BiasMeasure({}, obj)
    raise ArtifactError(f"bias measure {name!r} is neither a BiasMeasure nor a function")
