"""The summary a multirun leaves in its sweep folder: did the students move toward their teacher?

After a sweep, :class:`biaskd.tools.cli.SummaryCallback` calls :func:`write_summary` (named in the
config, ``hydra.callbacks.summary.summarize``). From the sweep's run dirs (listed in ``runs.txt``,
:mod:`biaskd.record.sweep`) and their teachers it writes

* ``summary.csv`` -- mean ± 95% CI over seeds per configuration, split and metric; the measures
  against a teacher (agreement, JS, probe CKA) once per teacher, in the ``teacher`` column;
* ``paired.csv`` -- per teacher and distilled configuration, the differences distilled −
  independent and distilled − self-distilled, paired by seed, with their 95% intervals;
* ``summary.md`` -- the same as tables, and one sentence per comparison computed from them.

Which student is compared with which teacher, and the paired differences: :mod:`analysis.controls`.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd

from biaskd.record.sweep import RUNS_FILE, sweep_runs, write_runs_file

from analysis import tables
from analysis.controls import (BIAS, DIGITS, METRIC_NAMES, PROBE, TEACHER_METRICS, bias_splits, comparisons,
                               diff_text, headline_split, load_sweep, measures_frame, paired_frame, run_frame,
                               sentences, split_order)
from analysis.markdown import markdown_table

#: metrics of the per-configuration summary (others stay in the run dirs and the report)
SUMMARY_METRICS = ("accuracy", "a_accuracy", "d_accuracy", "perplexity", "ece")


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
        return pd.DataFrame(columns=["configuration", "teacher", "split", "metric", "text", "seeds", "n"])
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
    w = w[splits if splits is not None else split_order(w.columns)]
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
    head = headline_split(bias)
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
    head = headline_split(bias)
    for (teacher, distilled), g in paired.groupby(["teacher", "distilled"], sort=False):
        rows = {}
        for r in g.to_dict("records"):
            if compact and not (r["split"] in (head, PROBE) or (r["split"] == "test" and r["metric"] == "accuracy")):
                continue
            key = (METRIC_NAMES[r["metric"]], r["split"])
            digits = DIGITS.get(r["metric"], 3)
            row = rows.setdefault(key, {"metric": key[0], "split": key[1],
                                        "distilled": _number(r["mean_distilled"], digits)})
            row[f"− {r['control']}"] = diff_text(r)
            row[r["control"]] = _number(r["mean_control"], digits)
        if compact:  # a measure no control could be paired on (an online student's co-trained teacher)
            rows = {k: r for k, r in rows.items() if any(v != "–" for c, v in r.items() if c.startswith("− "))}
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
    frame = run_frame(sweep.runs)
    comps = comparisons(sweep)
    values = measures_frame(sweep, comps)
    paired = paired_frame(values, comps, sweep)
    teacher = teacher_summary(values, frame)
    summary = pd.concat([summary_table(frame), teacher], ignore_index=True)
    bias = bias_splits(frame["split"].unique())
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
             "; their teachers included. Mean ± 95% CI over seeds (Student t)"
             + ("" if n_seeds > 1 else "; every configuration ran with one seed, so no intervals") + ".",
             f"Run dirs: [`{RUNS_FILE}`]({RUNS_FILE}); every number: [`summary.csv`](summary.csv), "
             f"[`paired.csv`](paired.csv); the full analysis: `python -m analysis.report {sweep_dir} --out <folder>`.", ""]
    if accuracy is not None:
        lines += ["## Accuracy per eval split", "", markdown_table(accuracy), ""]
    agree = agreement_table_md(teacher)
    if agree is not None:
        lines += ["## Top-1 agreement with the teacher", "",
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
    if any(k[1].endswith("(co-trained)") for k in sweep.teachers):
        sweep.notes.append("An online student's teacher is trained alongside it and not saved: its agreement, JS and "
                           "CKA with that teacher are its own (metrics.json); no control can be compared with it.")
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
