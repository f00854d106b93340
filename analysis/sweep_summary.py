"""The summary a multirun leaves in its sweep folder: did the students move toward their teacher?

After a sweep, :class:`biaskd.cli.SummaryCallback` calls :func:`write_summary` (named in the
config, ``hydra.callbacks.summary.summarize``). From the sweep's run dirs (listed in ``runs.txt``,
:mod:`biaskd.sweep`) and their teachers it writes

* ``summary.csv`` -- mean ± 95% CI over seeds per configuration, split and metric; the measures
  against a teacher (agreement, JS, probe CKA) once per teacher, in the ``teacher`` column;
* ``paired.csv`` -- per teacher and distilled configuration, the differences distilled −
  independent and distilled − self-distilled, paired by seed, with their 95% intervals
  (:func:`analysis.tables.paired_test`);
* ``summary.md`` -- the same as tables, and one sentence per comparison computed from them.

Every student is compared with the teacher it is a control for: a distilled student with its own
teacher, the independent and self-distilled students of the same model with that teacher of the
same seed. Where a run's ``metrics.json`` holds the measures against that very teacher run they
are read from it, otherwise they are computed from the saved outputs and probe features
(:func:`analysis.agreement.agreement_table`, :func:`biaskd.measures.linear_cka`: the definitions
the run itself logs), so a sweep whose independent jobs ran before the teacher existed still gets
them, and so does a rerun in which every job is skipped.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from biaskd.errors import ArtifactError
from biaskd.measures import linear_cka
from biaskd.sweep import RUNS_FILE, sweep_runs, write_runs_file

from analysis import figures, tables
from analysis.agreement import agreement_table
from analysis.markdown import markdown_table
from analysis.runs import Run, load_run, order_splits, runs_frame, with_teachers
from analysis.similarity import check_same_probe

#: metrics of the per-configuration summary (others stay in the run dirs and the report)
SUMMARY_METRICS = ("accuracy", "a_accuracy", "d_accuracy", "perplexity", "ece")
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


def _frame(runs: list[Run]) -> pd.DataFrame:
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


def load_sweep(run_paths: list[Path]) -> Sweep:
    runs = with_teachers(load_run(p) for p in run_paths)
    students = [r for r in runs if r.role != "teacher"]
    frame = _frame(runs)
    label = frame.drop_duplicates("run").set_index("run")["configuration"].to_dict()
    sweep = Sweep(runs, students, label)
    cache: dict[Path, Run | None] = {r.path.resolve(): r for r in runs}
    # a teacher per key and student seed: distilled students' own teachers first, then the ones
    # independent students were compared with
    for kind in ("distilled", "compared"):
        for s in students:
            if s.distill == "online":
                continue
            if kind == "distilled":
                t = s.teacher if s.distill != "none" else None
            else:
                t = _compared_teacher(s, cache, sweep.notes) if s.distill == "none" else None
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


def _bias_splits(splits) -> list[str]:
    return [s for s in order_splits(splits) if s not in ("test", PROBE, BIAS)]


def _with_bias_mean(values: dict[tuple[str, str], float], metrics) -> dict[tuple[str, str], float]:
    """``values`` plus, per metric, the mean over the bias splits (when there are several and the
    run has all of them)."""
    out = dict(values)
    for metric in metrics:
        splits = [s for (s, m) in values if m == metric]
        bias = _bias_splits(splits)
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
        if first.distill in ("none",):
            continue
        if first.distill == "online":
            key = (first.task, f"{first.teacher_model} (co-trained)", _epochs(first))
            sweep.teacher_label.setdefault(key, f"{first.teacher_model}, co-trained (online)")
            sweep.teachers.setdefault(key, {})
        else:
            t = next((m.teacher for m in members if m.teacher is not None), None)
            if t is None or t.path.resolve() not in keys:
                continue
            key = keys[t.path.resolve()]

        def control(mode: str) -> str | None:
            cands = {sweep.label[s.run_id]: s for s in sweep.students
                     if s.distill == mode and _config_key(s) == _config_key(first) and sweep.label[s.run_id] != label}
            if mode == "self" and len(cands) > 1:
                cands = {lb: s for lb, s in cands.items()
                         if (s.objective, s.alpha, s.temperature) == (first.objective, first.alpha, first.temperature)}
            return next(iter(cands)) if len(cands) == 1 else None

        out.append(Comparison(key, label, control("none"), control("self") if first.distill != "self" else None))
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
            wanted[key] = {sweep.label[s.run_id] for s in sweep.students if s.distill == "none"
                           and s.seed in seeds and s.task == key[0]}
    for key, labels in wanted.items():
        for s in sweep.students:
            if sweep.label[s.run_id] not in labels:
                continue
            values = _own_values(s)
            teacher = sweep.teachers.get(key, {}).get(s.seed)
            measured: dict = {}
            if s.distill == "online" and key[1].endswith("(co-trained)"):
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
            for split in _split_order(splits):
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
                                 "mean_distilled": float(d[seeds].mean()) if seeds else math.nan,
                                 "mean_control": float(ctl[seeds].mean()) if seeds else math.nan,
                                 "mean_diff": test["mean_diff"], "diff_half_width": hw,
                                 "ci_low": test["mean_diff"] - hw, "ci_high": test["mean_diff"] + hw,
                                 "p_ttest": test["p_ttest"], "note": test["note"]})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _split_order(splits) -> list[str]:
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


def _diff_text(row) -> str:
    return format_diff(row["mean_diff"], row["diff_half_width"], int(row["n_pairs"]), DIGITS.get(row["metric"], 3))


def _headline_split(bias: list[str]) -> str:
    """Where a sentence reads accuracy, agreement and JS: the mean over the bias splits, the one
    bias split, or test."""
    return BIAS if len(bias) > 1 else (bias[0] if bias else "test")


def sentences(paired: pd.DataFrame, bias: list[str]) -> list[str]:
    """One sentence per distilled configuration and control, computed from ``paired``: the
    differences on the mean over the bias splits (accuracy, agreement, JS) and the probe CKA."""
    out = []
    where = (f"mean over the {len(bias)} bias splits {_span(bias)}" if len(bias) > 1 else f"on {_headline_split(bias)}")
    for (teacher, distilled, control), g in paired.groupby(["teacher", "distilled", "control"], sort=False):
        parts, clear = [], []
        for metric in PAIRED_METRICS:
            split = PROBE if metric == "teacher_cka" else _headline_split(bias)
            row = g[(g["metric"] == metric) & (g["split"] == split)]
            if row.empty or not int(row.iloc[0]["n_pairs"]):
                continue
            row = row.iloc[0]
            name = {"accuracy": "accuracy", "teacher_agreement": f"agreement with {teacher}",
                    "teacher_js": "JS divergence", "teacher_cka": f"probe CKA with {teacher}"}[metric]
            parts.append(f"{name} {_diff_text(row)}")
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


# -- tables ------------------------------------------------------------------------------------------
def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95% CI over seeds per configuration (epochs included), split and metric."""
    frame = frame[frame["metric"].isin(SUMMARY_METRICS)]
    keys = [k for k in tables.CONFIG_KEYS if k in frame.columns] + ["epochs", "configuration", "split", "metric"]
    summary = tables.summarize(frame, by=keys)
    summary.insert(0, "configuration", summary.pop("configuration"))
    summary.insert(1, "teacher", "")
    # teachers first, then the configurations in the order the sweep ran them
    first = {c: i for i, c in enumerate(dict.fromkeys(frame.drop_duplicates("run")["configuration"]))}
    return summary.sort_values("configuration", kind="stable",
                               key=lambda c: c.map(first) + 1000 * (summary["role"] != "teacher"))


def teacher_summary(values: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95% CI over seeds of the measures against each teacher, per configuration and split."""
    part = values[values["metric"].isin(TEACHER_METRICS)]
    if part.empty:
        return pd.DataFrame(columns=["configuration", "teacher"])
    cols = [k for k in tables.CONFIG_KEYS + ["epochs"] if k in frame.columns]
    info = frame.drop_duplicates("run").set_index("run")[cols]
    part = part.drop(columns=["distill", "teacher_key"]).join(info, on="run")
    summary = tables.summarize(part, by=["teacher", "configuration", *cols, "split", "metric"])
    js = summary["metric"] == "teacher_js"
    summary.loc[js, "text"] = [tables.format_mean_ci(m, h, n, digits=DIGITS["teacher_js"])
                               for m, h, n in zip(summary.loc[js, "mean"], summary.loc[js, "half_width"],
                                                  summary.loc[js, "n"])]
    summary.insert(0, "configuration", summary.pop("configuration"))
    summary.insert(1, "teacher", summary.pop("teacher"))
    return summary


def _wide(summary: pd.DataFrame, metric: str, index: list[str], splits: list[str] | None = None) -> pd.DataFrame | None:
    part = summary[summary["metric"] == metric]
    if part.empty:
        return None
    w = part.pivot_table(index=index, columns="split", values="text", aggfunc="first", sort=False)
    w = w[splits if splits is not None else _split_order(w.columns)]
    seeds = part.groupby(index, sort=False)["seeds"].first()
    w.insert(0, "seeds", seeds.reindex(w.index))
    return w.reset_index()


def agreement_table_md(teacher: pd.DataFrame) -> pd.DataFrame | None:
    """Agreement per eval split (and the mean over the bias splits) and the probe CKA, one row
    per teacher and configuration."""
    w = _wide(teacher[teacher["split"] != PROBE], "teacher_agreement", ["teacher", "configuration"])
    if w is None:
        return None
    cka = teacher[(teacher["metric"] == "teacher_cka")].set_index(["teacher", "configuration"])["text"]
    w["probe CKA"] = [cka.get((t, c), "–") for t, c in zip(w["teacher"], w["configuration"])]
    return w


def agreement_table_console(teacher: pd.DataFrame, bias: list[str]) -> pd.DataFrame | None:
    """The console's agreement table: per teacher and configuration, agreement on test and on the
    bias splits (their mean), JS there, probe CKA."""
    if teacher.empty:
        return None
    rows = []
    head = _headline_split(bias)
    name = "bias" if head == BIAS else head
    for (t, c), g in teacher.groupby(["teacher", "configuration"], sort=False):
        text = {(r.split, r.metric): r.text for r in g.itertuples()}
        row = {"teacher": t, "configuration": c, "seeds": g["seeds"].iloc[0],
               "agreement test": text.get(("test", "teacher_agreement"), "–")}
        if head != "test":
            row[f"agreement {name}"] = text.get((head, "teacher_agreement"), "–")
        row[f"JS {name}"] = text.get((head, "teacher_js"), "–")
        row["probe CKA"] = text.get((PROBE, "teacher_cka"), "–")
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(paired: pd.DataFrame, bias: list[str], compact: bool) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (teacher, distilled configuration): one row per metric and split, the means and the two
    differences. ``compact`` (the console): accuracy on test, then every measure on the bias
    splits (their mean, or the one there is) and the probe CKA."""
    out = {}
    head = _headline_split(bias)
    for (teacher, distilled), g in paired.groupby(["teacher", "distilled"], sort=False):
        rows = {}
        for r in g.to_dict("records"):
            if compact and not (r["split"] in (head, PROBE) or (r["split"] == "test" and r["metric"] == "accuracy")):
                continue
            key = (METRIC_NAMES[r["metric"]], r["split"])
            digits = DIGITS.get(r["metric"], 3)
            row = rows.setdefault(key, {"metric": key[0], "split": key[1],
                                        "distilled": _number(r["mean_distilled"], digits)})
            row[f"− {r['control']}"] = _diff_text(r)
            row[r["control"]] = _number(r["mean_control"], digits)
        frame = pd.DataFrame(list(rows.values()))
        order = ["metric", "split", "distilled"] + [c for c in ("independent", "self-distilled", "− independent",
                                                                 "− self-distilled") if c in frame.columns]
        out[(teacher, distilled)] = frame[order]
    return out


def _number(value: float, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# -- the files ---------------------------------------------------------------------------------------
def summary_frames(run_paths: list[Path]):
    """(summary, paired differences, computed sentences, markdown parts, console parts, notes)."""
    sweep = load_sweep(run_paths)
    frame = _frame(sweep.runs)
    comps = comparisons(sweep)
    values = measures_frame(sweep, comps)
    paired = paired_frame(values, comps, sweep)
    teacher = teacher_summary(values, frame)
    summary = pd.concat([summary_table(frame), teacher], ignore_index=True)
    bias = _bias_splits(frame["split"].unique())
    return sweep, summary, teacher, paired, sentences(paired, bias), bias


def write_summary(sweep_dir: str | Path, failed: int = 0) -> tuple[Path, str] | None:
    """``runs.txt``, ``summary.csv``, ``paired.csv`` and ``summary.md`` in ``sweep_dir``; returns
    the path of ``summary.md`` and what the console shows (the accuracy table, the agreement with
    each teacher, the paired differences and the sentences computed from them), or None when no
    job produced a run."""
    sweep_dir = Path(sweep_dir)
    runs = sweep_runs(sweep_dir)
    if not runs:
        return None
    write_runs_file(sweep_dir, runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy on identical per-seed values: said in the note
        sweep, summary, teacher, paired, said, bias = summary_frames(runs)
    summary.to_csv(sweep_dir / "summary.csv", index=False)
    paired.to_csv(sweep_dir / "paired.csv", index=False)
    accuracy = _wide(summary[summary["teacher"] == ""], "accuracy", ["configuration"])
    if accuracy is not None:
        ece = summary[(summary["metric"] == "ece") & (summary["split"] == "test")].set_index("configuration")["text"]
        accuracy["test ECE"] = accuracy["configuration"].map(ece).fillna("–")
    n_seeds = summary["n"].max() if len(summary) else 0
    lines = [f"# Sweep summary: `{sweep_dir}`", "",
             f"{len(runs)} run(s) from the sweep's jobs" + (f", {failed} job(s) failed" if failed else "") +
             f"; their teachers included. Mean ± 95% CI over seeds (Student t)"
             + ("" if n_seeds > 1 else "; every configuration ran with one seed, so no intervals") + ".",
             f"Run dirs: [`{RUNS_FILE}`]({RUNS_FILE}); every number: [`summary.csv`](summary.csv), "
             f"[`paired.csv`](paired.csv); the full analysis: `python -m analysis.report {sweep_dir} --out <folder>`.", ""]
    if accuracy is not None:
        lines += ["## Accuracy per eval split", "", markdown_table(accuracy), ""]
    agree = agreement_table_md(teacher)
    if agree is not None:
        lines += ["## Agreement with the teacher", "",
                  "Top-1 agreement per eval split with the teacher in the `teacher` column (of the student's seed), "
                  f"`{BIAS}` = the mean over every eval split but `test`; `probe CKA` = linear CKA of the probe-set "
                  "features with the teacher's. Independent and self-distilled students are compared with the "
                  "teacher of the distilled students they are controls for.", "", markdown_table(agree), ""]
    if not paired.empty:
        lines += ["## Did the distilled students move toward their teacher?", "",
                  "Differences paired by seed, distilled − control, mean and 95% t-interval over seeds "
                  f"(`analysis.tables.paired_test`); JS is lower when closer to the teacher. Bias splits: "
                  f"{', '.join(bias) if bias else 'none (only test)'}.", ""]
        lines += [f"- {s}" for s in said] + [""]
        for (t, d), table in paired_table(paired, bias, compact=False).items():
            lines += [f"### {d} (teacher {t})", "", markdown_table(table), ""]
    if sweep.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in sorted(set(sweep.notes))] + [""]
    path = sweep_dir / "summary.md"
    path.write_text("\n".join(lines))
    return path, console_text(accuracy, teacher, paired, said, bias)


def console_text(accuracy: pd.DataFrame | None, teacher: pd.DataFrame, paired: pd.DataFrame, said: list[str],
                 bias: list[str]) -> str:
    parts = []
    if accuracy is not None:
        parts.append(accuracy.to_string(index=False))
    agree = agreement_table_console(teacher, bias)
    if agree is not None:
        parts.append("agreement with the teacher" + (" (bias: the mean over every eval split but test)"
                                                     if len(bias) > 1 else "") + ":\n" + agree.to_string(index=False))
    for (t, d), table in paired_table(paired, bias, compact=True).items():
        parts.append(f"{d} (teacher {t}), paired by seed, 95% interval:\n" + table.to_string(index=False))
    if said:
        parts.append("\n".join(said))
    return "\n\n".join(parts)
