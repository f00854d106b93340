"""Did a distilled student move toward its teacher? Each student against the teacher it is a control for.

A distilled student is compared with its own teacher; the independent and self-distilled students
of the same model (same task, transfer inputs and epochs) with that teacher of the same seed, the
baseline a distilled student should beat. Where a run's ``metrics.json`` holds the measures against
that very teacher run they are read from it, otherwise they are computed from the saved outputs and
probe features (:func:`analysis.agreement.agreement_table`, :func:`biaskd.pairwise.linear_cka`:
the definitions the run itself logs), so a sweep whose independent jobs ran before the teacher
existed still gets them, and so does a rerun in which every job is skipped.

:func:`paired_frame` gives, per teacher and distilled configuration, distilled − independent and
distilled − self-distilled, paired by seed (:func:`analysis.tables.paired_test`), for accuracy and
for agreement, JS and probe CKA with the teacher; :func:`sentences` says them in words, computed
from those numbers. :mod:`analysis.sweep_summary` writes them into a sweep folder.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from biaskd.errors import ArtifactError
from biaskd.modes import MODES, Mode
from biaskd.pairwise import linear_cka

from analysis import figures, tables
from analysis.agreement import agreement_table
from analysis.runs import Run, load_run, order_splits, runs_frame, with_teachers
from analysis.similarity import check_same_probe

#: the measures against a teacher: per eval split (agreement, JS) and on the probe set (CKA)
TEACHER_METRICS = ("teacher_agreement", "teacher_js", "teacher_cka")
#: what the paired differences are computed for
PAIRED_METRICS = ("accuracy",) + TEACHER_METRICS
METRIC_NAMES = {"accuracy": "accuracy", "teacher_agreement": "agreement", "teacher_js": "JS", "teacher_cka": "CKA"}
#: decimals shown per metric (JS divergences between similar models are small)
DIGITS = {"teacher_js": 4}
#: the pseudo split holding a run's mean over the bias splits (every eval split but ``test``)
BIAS = "bias splits (mean)"
PROBE = "probe"


@dataclass
class Sweep:
    """The runs of a sweep, their configurations, and each student's measures against each teacher."""

    runs: list[Run]
    students: list[Run]
    label: dict[str, str]  # run id -> its configuration's label
    teachers: dict[tuple, dict[int, Run]] = field(default_factory=dict)  # teacher key -> student seed -> teacher
    teacher_label: dict[tuple, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- loading ----------------------------------------------------------------------------------------
def _epochs(run: Run) -> int | None:
    epochs = (run.metrics.get("train") or {}).get("epochs")
    return int(epochs) if epochs is not None else None


def run_frame(runs: list[Run]) -> pd.DataFrame:
    """:func:`analysis.runs.runs_frame` with the epochs trained (a configuration key here: a sweep
    over student epochs must not pool them) and the configuration label."""
    frame = runs_frame(runs)
    epochs = {r.run_id: _epochs(r) for r in runs}
    frame["epochs"] = frame["run"].map(epochs)
    labels = figures.config_label(frame) if len(frame) else pd.Series(dtype=object)
    several = frame.assign(label=labels).groupby("label")["epochs"].nunique()
    frame["configuration"] = [lb + (f" · {e} epochs" if several.get(lb, 1) > 1 else "")
                              for lb, e in zip(labels, frame["epochs"])]
    return frame


def _teacher_key(teacher: Run) -> tuple:
    return teacher.task, teacher.model, _epochs(teacher)


def _resolve(run: Run, ref: str | None) -> Path | None:
    if not ref:
        return None
    p = Path(ref)
    return p if p.is_absolute() else Path(os.path.normpath(run.path.parent / p))


def _compared_teacher(run: Run, cache: dict[Path, Run | None], notes: list[str]) -> Run | None:
    """The teacher run a student's metrics.json compared it with (an independent student's
    ``teacher.compare``; a distilled student's own), or None."""
    path = _resolve(run, (run.metrics.get("teacher") or {}).get("run"))
    if path is None:
        return None
    if path not in cache:
        try:
            cache[path] = load_run(path)
        except ArtifactError as exc:
            cache[path] = None
            notes.append(f"{run.path.name}: the teacher its metrics.json names cannot be read ({exc})")
    return cache[path]


def _own_teacher(run: Run, notes: list[str]) -> Run | None:
    """A distilled student's teacher run, or None (with a note) when it cannot be read."""
    try:
        return run.teacher
    except ArtifactError as exc:
        notes.append(f"{run.path.name}: {exc}")
        return None


def load_sweep(run_paths: list[Path]) -> Sweep:
    loaded, notes = [], []
    for path in run_paths:
        try:
            loaded.append(load_run(path))
        except ArtifactError as exc:  # moved or removed since its job ran
            notes.append(f"left out: {exc}")
    runs = with_teachers(loaded)
    students = [r for r in runs if r.role != "teacher"]
    frame = run_frame(runs)
    label = frame.drop_duplicates("run").set_index("run")["configuration"].to_dict()
    sweep = Sweep(runs, students, label, notes=notes)
    cache: dict[Path, Run | None] = {r.path.resolve(): r for r in runs}
    # a teacher per key and student seed: distilled students' own teachers first, then the ones
    # independent students were compared with
    for kind in ("distilled", "compared"):
        for s in students:
            if _online(s):
                continue
            if kind == "distilled":
                t = _own_teacher(s, sweep.notes) if not _independent(s) else None
            else:
                t = _compared_teacher(s, cache, sweep.notes) if _independent(s) else None
            if t is None or t.task != s.task:
                continue
            sweep.teachers.setdefault(_teacher_key(t), {}).setdefault(s.seed, t)
    models = pd.Series([k[1] for k in sweep.teachers])
    for key in sweep.teachers:
        task, model, epochs = key
        sweep.teacher_label[key] = model + (f" ({epochs} epochs)" if (models == model).sum() > 1 else "")
    return sweep


# -- the measures against a teacher -------------------------------------------------------------------
def teacher_measures(student: Run, teacher: Run) -> dict[tuple[str, str], float]:
    """``{(split, metric): value}`` of ``student`` against ``teacher``: ``teacher_agreement`` and
    ``teacher_js`` per eval split, ``teacher_cka`` on the probe set. From the student's
    metrics.json when it compared itself with this very teacher run, else from the saved outputs
    and probe features of the two runs (the same definitions)."""
    out: dict[tuple[str, str], float] = {}
    logged = _resolve(student, (student.metrics.get("teacher") or {}).get("run"))
    if logged is not None and logged.resolve() == teacher.path.resolve():
        for split, m in student.metrics["splits"].items():
            for metric in ("teacher_agreement", "teacher_js"):
                if m.get(metric) is not None:
                    out[(split, metric)] = float(m[metric])
        cka = (student.metrics.get("probe") or {}).get("teacher_cka")
        if cka is not None:
            out[(PROBE, "teacher_cka")] = float(cka)
        return out
    table = agreement_table([(student, teacher)])
    for row in table[table["group"] == "all"].itertuples():
        out[(row.split, "teacher_agreement")] = float(row.top1_agreement)
        out[(row.split, "teacher_js")] = float(row.js_divergence)
    if student.has_features("final") and teacher.has_features("final"):
        a, b = student.features("final"), teacher.features("final")
        check_same_probe(a, b)
        out[(PROBE, "teacher_cka")] = linear_cka(a.features, b.features)
    return out


def bias_splits(splits) -> list[str]:
    return [s for s in order_splits(splits) if s not in ("test", PROBE, BIAS)]


def _with_bias_mean(values: dict[tuple[str, str], float], metrics) -> dict[tuple[str, str], float]:
    """``values`` plus, per metric, the mean over the bias splits (when there are several and the
    run has all of them)."""
    out = dict(values)
    for metric in metrics:
        splits = [s for (s, m) in values if m == metric]
        bias = bias_splits(splits)
        if len(bias) > 1 and all(not math.isnan(values[(s, metric)]) for s in bias):
            out[(BIAS, metric)] = sum(values[(s, metric)] for s in bias) / len(bias)
    return out


def _own_values(run: Run) -> dict[tuple[str, str], float]:
    vals = {(split, "accuracy"): float(m["accuracy"]) for split, m in run.metrics["splits"].items()
            if m.get("accuracy") is not None}
    return _with_bias_mean(vals, ("accuracy",))


@dataclass
class Comparison:
    """One distilled configuration of one teacher, with its two controls."""

    teacher: tuple
    distilled: str
    independent: str | None
    self_distilled: str | None


def _config_key(run: Run) -> tuple:
    return run.task, run.model, run.transfer, _epochs(run)


def _mode(run: Run) -> Mode | None:
    """The run's distillation mode (:mod:`biaskd.modes`); None for one the suite does not define
    (then read as distilled from a teacher run of its own)."""
    return MODES.get(run.distill)


def _independent(run: Run) -> bool:
    return _mode(run) is not None and not _mode(run).distilled


def _online(run: Run) -> bool:
    return _mode(run) is not None and _mode(run).online


def _self_distilled(run: Run) -> bool:
    return _mode(run) is not None and _mode(run).teacher_is_student


def comparisons(sweep: Sweep) -> list[Comparison]:
    """Per teacher key, every distilled configuration taught by it (self-distilled ones included,
    for their own teacher) with the independent and self-distilled configurations of the same
    model, task, transfer inputs and epochs. A self-distilled control with the distilled
    configuration's objective, α and T is preferred; with several and none matching, none."""
    by_label: dict[str, list[Run]] = {}
    for s in sweep.students:
        by_label.setdefault(sweep.label[s.run_id], []).append(s)
    keys = {t.path.resolve(): key for key, seeds in sweep.teachers.items() for t in seeds.values()}
    out = []
    for label, members in by_label.items():
        first = members[0]
        if _independent(first):
            continue
        if _online(first):
            key = (first.task, f"{first.teacher_model} (co-trained)", _epochs(first))
            sweep.teacher_label.setdefault(key, f"{first.teacher_model}, co-trained (online)")
            sweep.teachers.setdefault(key, {})
        else:
            t = next((t for t in (_own_teacher(m, sweep.notes) for m in members) if t is not None), None)
            if t is None or t.path.resolve() not in keys:
                continue
            key = keys[t.path.resolve()]

        def control(is_control: Callable[[Run], bool]) -> str | None:
            cands = {sweep.label[s.run_id]: s for s in sweep.students
                     if is_control(s) and _config_key(s) == _config_key(first) and sweep.label[s.run_id] != label}
            if is_control is _self_distilled and len(cands) > 1:
                cands = {lb: s for lb, s in cands.items()
                         if (s.objective, s.alpha, s.temperature) == (first.objective, first.alpha, first.temperature)}
            return next(iter(cands)) if len(cands) == 1 else None

        out.append(Comparison(key, label, control(_independent),
                              control(_self_distilled) if not _self_distilled(first) else None))
    return out


def measures_frame(sweep: Sweep, comps: list[Comparison]) -> pd.DataFrame:
    """One row per (teacher key, student run, split, metric) of the runs the comparisons name:
    accuracy (the same under every teacher) and the measures against that teacher of the
    student's seed (online students: their own co-trained teacher, from metrics.json)."""
    rows = []
    wanted: dict[tuple, set[str]] = {}
    for c in comps:
        wanted.setdefault(c.teacher, set()).update(x for x in (c.distilled, c.independent, c.self_distilled) if x)
    # independents compared with a teacher no distilled configuration of the sweep uses
    for key, seeds in sweep.teachers.items():
        if key not in wanted:
            wanted[key] = {sweep.label[s.run_id] for s in sweep.students if _independent(s)
                           and s.seed in seeds and s.task == key[0]}
    for key, labels in wanted.items():
        for s in sweep.students:
            if sweep.label[s.run_id] not in labels:
                continue
            values = _own_values(s)
            teacher = sweep.teachers.get(key, {}).get(s.seed)
            measured: dict = {}
            if _online(s) and key[1].endswith("(co-trained)"):
                measured = {(split, m): float(v[m]) for split, v in s.metrics["splits"].items()
                            for m in ("teacher_agreement", "teacher_js") if v.get(m) is not None}
                cka = (s.metrics.get("probe") or {}).get("teacher_cka")
                if cka is not None:
                    measured[(PROBE, "teacher_cka")] = float(cka)
            elif teacher is not None:
                try:
                    measured = teacher_measures(s, teacher)
                except ArtifactError as exc:
                    sweep.notes.append(f"{s.path.name} against {teacher.path.name}: {exc}")
            values.update(_with_bias_mean(measured, ("teacher_agreement", "teacher_js")))
            for (split, metric), value in values.items():
                rows.append({"teacher": sweep.teacher_label[key], "teacher_key": key,
                             "configuration": sweep.label[s.run_id], "run": s.run_id, "seed": s.seed,
                             "distill": s.distill, "split": split, "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["teacher", "teacher_key", "configuration", "run", "seed", "distill", "split",
                                       "metric", "value"])


# -- paired differences ------------------------------------------------------------------------------
PAIRED_COLUMNS = ["teacher", "distilled", "control", "control_configuration", "metric", "split", "n_pairs", "seeds",
                  "mean_distilled", "mean_control", "mean_diff", "diff_half_width", "ci_low", "ci_high", "p_ttest",
                  "note"]


def _by_seed(values: pd.DataFrame, label: str | None, split: str, metric: str) -> pd.Series:
    if label is None:
        return pd.Series(dtype=float)
    sel = values[(values["configuration"] == label) & (values["split"] == split) & (values["metric"] == metric)]
    return sel.groupby("seed")["value"].mean()


def paired_frame(values: pd.DataFrame, comps: list[Comparison], sweep: Sweep) -> pd.DataFrame:
    """distilled − independent and distilled − self-distilled per teacher, distilled configuration,
    metric and split, paired by seed (:func:`analysis.tables.paired_test`)."""
    rows = []
    for c in comps:
        mine = values[values["teacher_key"] == c.teacher]
        d_rows = mine[mine["configuration"] == c.distilled]
        pairs = d_rows[["split", "metric"]].drop_duplicates()
        for metric in PAIRED_METRICS:
            splits = pairs[pairs["metric"] == metric]["split"]
            for split in split_order(splits):
                d = _by_seed(mine, c.distilled, split, metric)
                for control, label in (("independent", c.independent), ("self-distilled", c.self_distilled)):
                    if label is None:
                        continue
                    ctl = _by_seed(mine, label, split, metric)
                    test = tables.paired_test(d, ctl)
                    hw = test["diff_half_width"]
                    seeds = [int(x) for x in test["seeds"].split(",") if x]
                    rows.append({"teacher": sweep.teacher_label[c.teacher], "distilled": c.distilled,
                                 "control": control, "control_configuration": label, "metric": metric,
                                 "split": split, "n_pairs": test["n_pairs"], "seeds": test["seeds"],
                                 # over the paired seeds; without a pair, over the distilled run's own
                                 "mean_distilled": float(d[seeds].mean() if seeds else d.mean()) if len(d) else math.nan,
                                 "mean_control": float(ctl[seeds].mean()) if seeds else math.nan,
                                 "mean_diff": test["mean_diff"], "diff_half_width": hw,
                                 "ci_low": test["mean_diff"] - hw, "ci_high": test["mean_diff"] + hw,
                                 "p_ttest": test["p_ttest"], "note": test["note"]})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def split_order(splits) -> list[str]:
    splits = list(dict.fromkeys(splits))
    named = order_splits(s for s in splits if s not in (BIAS, PROBE))
    return named + [s for s in (BIAS, PROBE) if s in splits]


def format_diff(mean: float, half_width: float, n: int, digits: int = 3) -> str:
    """``+0.120 [0.080, 0.160]``; one pair: ``+0.120 (1 seed)``; no pair: ``–``."""
    if n == 0 or mean is None or math.isnan(mean):
        return "–"
    if half_width is None or math.isnan(half_width):
        return f"{mean:+.{digits}f} ({n} seed{'s' if n != 1 else ''})"
    return f"{mean:+.{digits}f} [{mean - half_width:.{digits}f}, {mean + half_width:.{digits}f}]"


def diff_text(row, seeds_said: bool = False) -> str:
    """A paired difference as text; ``seeds_said``: the number of seeds is said elsewhere."""
    text = format_diff(row["mean_diff"], row["diff_half_width"], int(row["n_pairs"]), DIGITS.get(row["metric"], 3))
    return text.split(" (")[0] if seeds_said else text


def headline_split(bias: list[str]) -> str:
    """Where a sentence reads accuracy, agreement and JS: the mean over the bias splits, the one
    bias split, or test."""
    return BIAS if len(bias) > 1 else (bias[0] if bias else "test")


def sentences(paired: pd.DataFrame, bias: list[str]) -> list[str]:
    """One sentence per distilled configuration and control, computed from ``paired``: the
    differences on the mean over the bias splits (accuracy, agreement, JS) and the probe CKA."""
    out = []
    where = (f"mean over the {len(bias)} bias splits {_span(bias)}" if len(bias) > 1 else f"on {headline_split(bias)}")
    for (teacher, distilled, control), g in paired.groupby(["teacher", "distilled", "control"], sort=False):
        parts, clear = [], []
        for metric in PAIRED_METRICS:
            split = PROBE if metric == "teacher_cka" else headline_split(bias)
            row = g[(g["metric"] == metric) & (g["split"] == split)]
            if row.empty or not int(row.iloc[0]["n_pairs"]):
                continue
            row = row.iloc[0]
            name = {"accuracy": "accuracy", "teacher_agreement": f"agreement with {teacher}",
                    "teacher_js": "JS divergence", "teacher_cka": f"probe CKA with {teacher}"}[metric]
            parts.append(f"{name} {diff_text(row, seeds_said=True)}")
            if not math.isnan(row["diff_half_width"]) and (row["ci_low"] > 0 or row["ci_high"] < 0):
                clear.append(f"{METRIC_NAMES[metric]} {'higher' if row['mean_diff'] > 0 else 'lower'}")
        if not parts:
            continue
        n = int(g["n_pairs"].max())
        if n < 2:
            reading = "one seed: no interval, so no conclusion"
        elif clear:
            reading = "95% interval excludes 0: " + ", ".join(clear)
        else:
            reading = "every 95% interval contains 0"
        out.append(f"{distilled} − {g.iloc[0]['control_configuration']} ({n} seed{'s' if n != 1 else ''}, "
                   f"{where}): " + "; ".join(parts) + f" ({reading}).")
    return out


def _span(splits: list[str]) -> str:
    return "(" + (", ".join(splits) if len(splits) <= 4 else f"{splits[0]} … {splits[-1]}") + ")"
