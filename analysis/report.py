"""Write a Markdown report (tables, PNG figures, CSVs) for a set of run dirs.

    python -m analysis.report RUNS... --out DIR [--measure linear_cka] [--seed 0]

RUNS are run dirs or folders containing them (sweep dirs). Teachers named by the runs are
added even when they live elsewhere. Every section states what it could not compute and why
(no teacher, one seed, no intermediate features, ...) instead of failing. Run dirs that are
incomplete, failed or corrupt (including unreadable per-example arrays), and second copies of
one run under another experiment folder, are left out, each named once under "Notes on the
inputs". Artifacts that are inconsistent across runs (e.g. different probe sets) stop only the
section that needs them, with the reason in its place, since its numbers would be wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import agreement as agr  # noqa: E402
from analysis import calibration, figures, maps, similarity, tables  # noqa: E402
from analysis.style import Style, legend_outside  # noqa: E402
from analysis.runs import (  # noqa: E402
    Run,
    RunProblem,
    find_runs,
    order_splits,
    readable_runs,
    runs_frame,
    with_teachers,
)
from biaskd.errors import ArtifactError  # noqa: E402
from biaskd.sweep import duration  # noqa: E402

#: Metrics shown in the per-split tables when present (others still go to the CSV).
HEADLINE_METRICS = ("accuracy", "a_accuracy", "d_accuracy", "ece", "perplexity")
#: Metadata keys with at most this many values get an agreement breakdown.
MAX_GROUP_VALUES = 20


def markdown_table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> str:
    """GitHub Markdown table; floats to ``digits`` decimals, NaN/None as ``–``."""
    if index:
        df = df.reset_index()
    if df.empty:
        return "_(empty)_"

    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return "–"
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


class Report:
    """Accumulates Markdown, figures and CSVs in ``out``."""

    def __init__(self, out: Path):
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.files: list[str] = []
        self.style = Style()  # labels and colours of the runs' configurations, set by build_report

    def h(self, level: int, text: str) -> None:
        self.lines += ["", "#" * level + " " + text, ""]

    def p(self, text: str) -> None:
        self.lines += [text, ""]

    def missing(self, text: str) -> None:
        self.lines += [f"> **Not available:** {text}", ""]

    def table(self, df: pd.DataFrame, csv: str | None = None, digits: int = 3) -> None:
        self.lines += [markdown_table(df, digits), ""]
        if csv:
            self.csv(df, csv)

    def csv(self, df: pd.DataFrame, name: str) -> None:
        df.to_csv(self.out / name, index=False)
        self.files.append(name)
        self.lines += [f"CSV: [`{name}`]({name})", ""]

    def figure(self, fig, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.savefig(self.out / name, dpi=120, bbox_inches="tight")  # legends outside the axes included
        plt.close(fig)
        self.files.append(name)
        self.lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]

    def write(self) -> Path:
        path = self.out / "report.md"
        path.write_text("\n".join(self.lines).lstrip() + "\n")
        return path


def _label_map(rep: Report, runs: Sequence[Run]) -> dict[str, str]:
    return {r.run_id: rep.style.run_label(r) for r in runs}


def _with_config(rep: Report, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["config"] = rep.style.labels(frame)
    return frame


# --- sections ---------------------------------------------------------------------------------
def section_runs(rep: Report, runs: list[Run], frame: pd.DataFrame, sources: Sequence[str]) -> None:
    rep.h(2, "Runs")
    rep.p(f"{len(runs)} complete run(s) from: " + ", ".join(f"`{s}`" for s in sources) + ".")
    info = pd.DataFrame([{"task": r.task, "model": r.model, "role": r.role, "distill": r.distill,
                          "teacher_model": r.teacher_model, "seed": r.seed,
                          "feature_steps": len(r.feature_steps())} for r in runs])
    g = (info.groupby(["task", "model", "role", "distill", "teacher_model"], dropna=False)
         .agg(runs=("seed", "size"), seeds=("seed", lambda s: ",".join(map(str, sorted(s)))),
              feature_steps=("feature_steps", "max")).reset_index())
    rep.table(g)
    rep.csv(frame, "runs_long.csv")
    if (g["runs"] < 2).any():
        rep.p("Configurations with a single seed have no confidence interval (shown as `(n=1)`).")


def section_metrics(rep: Report, frame: pd.DataFrame) -> None:
    rep.h(2, "Metrics per eval split (mean ± 95% CI over seeds)")
    rep.p("Intervals are Student-t intervals over seeds; `(n=1)` marks a single seed (no interval).")
    summary = tables.summarize(frame)
    rep.csv(summary, "summary.csv")
    summary = _with_config(rep, summary)
    for task, st in summary.groupby("task"):
        rep.h(3, f"Task `{task}`")
        for metric in [m for m in HEADLINE_METRICS if m in set(st["metric"])]:
            sm = st[st["metric"] == metric]
            wide = sm.pivot_table(index="config", columns="split", values="text", aggfunc="first")
            wide = wide[order_splits(wide.columns)].reset_index()
            rep.p(f"**{metric}**")
            rep.table(wide)
        acc = st[st["metric"] == "accuracy"]
        if len(acc):
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * acc["split"].nunique() + 3), 3.8))
            figures.plot_bars_ci(acc, ax=ax, ylabel="accuracy", title=f"{task}: accuracy per split", style=rep.style)
            rep.figure(fig, f"accuracy_{task}.png", f"{task}: accuracy per eval split, mean ± 95% CI over seeds")


def section_severity(rep: Report, frame: pd.DataFrame) -> None:
    """Accuracy against severity for tasks with severity sweeps (``NAME_s1`` ...); silent otherwise."""
    acc = frame[frame["metric"] == "accuracy"]
    if not any(tables.split_severity(s)[1] is not None for s in acc["split"].unique()):
        return
    rep.h(2, "Accuracy vs severity")
    rep.p("Out-of-distribution splits generated at several severities (`NAME_s1` … `NAME_s5`); "
          "severity 0 is the clean `test` split. Mean ± 95% CI over seeds.")
    summary = _with_config(rep, tables.summarize(acc))
    for task, st in summary.groupby("task"):
        sev = tables.severity_table(st)
        if sev.empty:
            continue
        rep.h(3, f"Task `{task}`")
        wide = sev.pivot_table(index=["family", "config"], columns="severity", values="text", aggfunc="first")
        wide.columns = [f"s{c}" if c else "s0 (test)" for c in wide.columns]
        rep.table(wide.reset_index())
        rep.csv(sev.drop(columns=["text"]), f"severity_{task}.csv")
        fig = figures.plot_severity(sev, title=f"{task}: accuracy vs severity", style=rep.style)
        rep.figure(fig, f"severity_{task}.png", f"{task}: accuracy against OOD severity per model and "
                   "distillation mode (severity 0 = test; mean ± 95% CI over seeds)")


def section_transfer(rep: Report, frame: pd.DataFrame) -> None:
    rep.h(2, "Transfer ratio")
    rep.p("(m(student_KD) − m(student_indep)) / (m(teacher) − m(student_indep)), means over seeds: "
          "the fraction of the teacher–student gap that distillation closes (1 = all of it). "
          "For metrics where lower is better (ece, loss) the ratio reads the same way.")
    metrics = [m for m in HEADLINE_METRICS if m in set(frame["metric"])]
    t = tables.transfer_table(frame, metrics=metrics)
    if t.empty:
        rep.missing("no distilled students (distill ≠ none with a teacher model) among the runs.")
        return
    show = t[["task", "split", "metric", "model", "teacher_model", "distill", "m_kd", "m_indep",
              "m_teacher", "n_kd", "n_indep", "n_teacher", "transfer_ratio", "note"]]
    rep.table(show, csv="transfer.csv")
    if t["transfer_ratio"].isna().all():
        rep.missing("every transfer ratio is undefined; see the notes column.")


def section_paired(rep: Report, frame: pd.DataFrame) -> None:
    rep.h(2, "Distilled vs independent student, paired by seed")
    metrics = [m for m in HEADLINE_METRICS if m in set(frame["metric"])]
    t = tables.paired_tests(frame, metrics=metrics)
    if t.empty:
        rep.missing("no distilled students to compare with independent ones.")
        return
    rep.p("mean_diff = KD − independent (same seed). Paired t-test with ≥ 2 pairs; exact "
          "Wilcoxon signed-rank with ≥ 6 pairs.")
    rep.table(t[["task", "split", "metric", "model", "teacher_model", "distill", "n_pairs",
                 "mean_diff", "diff_half_width", "p_ttest", "p_wilcoxon", "note"]], csv="paired_tests.csv")
    if (t["n_pairs"] < 2).all():
        rep.missing("fewer than 2 seeds paired between distilled and independent students: no tests.")


def _agreement_pairs(runs: list[Run]) -> tuple[list[tuple[Run, Run]], list[str]]:
    """(student, teacher) for every student with a loadable teacher, plus, as a baseline,
    (independent run of the student's model, same teacher) matched by seed when possible."""
    pairs, problems = [], []
    indep = [r for r in runs if r.distill == "none"]
    ids = {r.run_id for r in runs}
    seen = set()
    for r in runs:
        if r.teacher_path is None:
            continue
        try:
            t = r.teacher
        except Exception as exc:  # ArtifactError: dangling teacher reference
            problems.append(str(exc))
            continue
        if t.run_id not in ids:  # left out of the report (see the notes on the inputs)
            problems.append(f"run {r.run_id}: its teacher {t.run_id} is not among the runs analysed.")
            continue
        for pair in [(r, t)] + [(i, t) for i in indep
                                if i.task == r.task and i.model == r.model and i.seed == r.seed and i != t]:
            key = (pair[0].run_id, pair[1].run_id)
            if key not in seen:
                seen.add(key)
                pairs.append(pair)
    return pairs, problems


def _group_keys(runs: list[Run], split: str = "test") -> list[str]:
    """Metadata keys worth a breakdown: in ``split`` outputs with 2..MAX_GROUP_VALUES values
    (checked on the first run of each task)."""
    keys, tasks = set(), set()
    for r in runs:
        if r.task in tasks or split not in r.output_splits():
            continue
        tasks.add(r.task)
        meta = r.outputs(split).meta
        keys |= {k for k, v in meta.items() if 1 < len(np.unique(v)) <= MAX_GROUP_VALUES}
    return sorted(keys)


def section_agreement(rep: Report, runs: list[Run]) -> None:
    rep.h(2, "Prediction agreement with the teacher")
    rep.p("Top-1 agreement, mean Jensen–Shannon divergence (nats, ≤ ln 2) and error consistency "
          "(Cohen's κ on correctness; – when both models are right, or both wrong, on every example). "
          "Rows with distill = none compare an independently trained student of the same model and "
          "seed with the same teacher: the baseline a distilled student should exceed.")
    pairs, problems = _agreement_pairs(runs)
    for msg in problems:
        rep.missing(msg)
    if not pairs:
        rep.missing("no run with a loadable teacher, so no teacher–student agreement.")
        return
    keys = _group_keys([p[0] for p in pairs])
    at = agr.agreement_table(pairs, by=keys or None)
    rep.csv(at, "agreement.csv")
    at = _with_config(rep, at)
    # an independent student is compared with every teacher of its seed: keep those apart
    none = at["distill"] == "none"
    at.loc[none, "config"] = at.loc[none, "config"] + " (vs " + at.loc[none, "reference_model"] + " teacher)"
    overall = at[at["group"] == "all"]
    metrics = ["top1_agreement", "js_divergence", "error_consistency"]
    for task, ta in overall.groupby("task"):
        rep.h(3, f"Task `{task}`")
        long = ta.melt(id_vars=["config", "split", "seed"], value_vars=metrics, var_name="metric")
        s = tables.summarize(long, by=["config", "split", "metric"])
        wide = s.pivot_table(index=["config", "split"], columns="metric", values="text", aggfunc="first")
        wide = wide.reindex(columns=metrics).reset_index()
        wide["split"] = pd.Categorical(wide["split"], order_splits(wide["split"]))
        rep.table(wide.sort_values(["split", "config"]))
        import matplotlib.pyplot as plt

        n_split, n_config = s["split"].nunique(), s["config"].nunique()
        fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.9 * n_split * n_config ** 0.5 + 2), 6.6), sharex=True)
        for ax, m in zip(axes, ["top1_agreement", "error_consistency"]):
            figures.plot_bars_ci(s[s["metric"] == m], ax=ax, ylabel=m.replace("_", " "), metric=m,
                                 title=f"{task}: {m.replace('_', ' ')} with the teacher", style=rep.style,
                                 legend=ax is axes[0])
        rep.figure(fig, f"agreement_{task}.png", f"{task}: agreement with the teacher per split (mean ± 95% CI)")
    for key in keys:
        g = at[at["group"] == key]
        if g.empty:
            continue
        rep.h(3, f"Top-1 agreement by `{key}`")
        s = tables.summarize(g.rename(columns={"top1_agreement": "value"}),
                             by=["task", "config", "split", "group_value"])
        wide = s.pivot_table(index=["task", "config", "split"], columns="group_value", values="text",
                             aggfunc="first").reset_index()
        wide.columns = [str(c) for c in wide.columns]
        wide["split"] = pd.Categorical(wide["split"], order_splits(wide["split"]))
        rep.table(wide.sort_values(["task", "split", "config"]), csv=f"agreement_by_{key}.csv")


def _features_ok(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    have = [r for r in runs if r.has_features("final")]
    return have, [r for r in runs if not r.has_features("final")]


def section_similarity(rep: Report, runs: list[Run], measure: str, seed: int) -> None:
    import matplotlib.pyplot as plt

    rep.h(2, f"Representational similarity ({measure}) and MDS maps")
    for task in sorted({r.task for r in runs}):
        rep.h(3, f"Task `{task}`")
        task_runs = [r for r in runs if r.task == task]
        have, lacking = _features_ok(task_runs)
        if lacking:
            rep.missing(f"{len(lacking)} run(s) have no `features/final.npz`: "
                        + ", ".join(r.run_id for r in lacking))
        if len(have) < 2:
            rep.missing("fewer than 2 runs with probe features: no similarity matrix or map.")
        else:
            S = similarity.similarity_matrix(have, measure=measure)
            rep.csv(S.reset_index(names="run"), f"{measure}_{task}.csv")
            fig, ax = plt.subplots(figsize=(min(18.0, 3.5 + 0.38 * len(S)), min(17.0, 2.5 + 0.38 * len(S))))
            figures.plot_similarity_heatmap(S, _label_map(rep, have), ax=ax, title=f"{task}: {measure}")
            rep.figure(fig, f"{measure}_{task}.png", f"{task}: pairwise {measure} of final probe features")
            _similarity_to_teacher(rep, have, S, measure)
            if S.isna().to_numpy().any():
                rep.missing("the similarity matrix has undefined entries (constant features); no MDS map.")
            else:
                coords = maps.run_map(have, S, seed=seed)
                rep.csv(coords, f"mds_{measure}_{task}.csv")
                fig, ax = plt.subplots(figsize=(6, 4.8))
                maps.plot_map(coords, ax=ax, title=f"{task}: MDS of 1 − {measure}", style=rep.style)
                rep.figure(fig, f"mds_{measure}_{task}.png", f"{task}: models placed by 1 − {measure} (MDS, seed {seed})")
        with_test = [r for r in task_runs if "test" in r.output_splits()]
        if len(with_test) >= 2:
            P = maps.prediction_similarity(with_test, split="test", measure="js")
            coords = maps.run_map(with_test, P, seed=seed)
            rep.csv(coords, f"mds_predictions_{task}.csv")
            fig, ax = plt.subplots(figsize=(6, 4.8))
            maps.plot_map(coords, ax=ax, title=f"{task}: MDS of predictions (1 − JS/ln 2, test)", style=rep.style)
            rep.figure(fig, f"mds_predictions_{task}.png",
                       f"{task}: models placed by the similarity of their test-set output distributions")
        else:
            rep.missing("fewer than 2 runs with test-split outputs: no prediction map.")


def _similarity_to_teacher(rep: Report, runs: list[Run], S: pd.DataFrame, measure: str) -> None:
    pairs, _ = _agreement_pairs(runs)
    if not any(s.run_id in S.index and t.run_id in S.index for s, t in pairs):
        rep.missing(f"no student with a teacher among the runs with features: no {measure} to teacher.")
        return
    d = pd.DataFrame([{**_style_row(s), "value": S.loc[s.run_id, t.run_id], "reference": t.model}
                      for s, t in pairs if s.run_id in S.index and t.run_id in S.index])
    d = _with_config(rep, d)
    none = d["distill"] == "none"
    d.loc[none, "config"] = d.loc[none, "config"] + " (vs " + d.loc[none, "reference"] + " teacher)"
    s = tables.summarize(d, by=["config"])
    rep.p(f"**{measure} with the teacher** (distill = none: independent student of the same seed)")
    rep.table(s[["config", "n", "mean", "half_width", "text"]])


def section_paths(rep: Report, runs: list[Run], measure: str, seed: int) -> None:
    import matplotlib.pyplot as plt

    rep.h(2, "Training paths")
    rep.p(f"Every saved (run, step) representation of a task in one MDS map of 1 − {measure}; "
          "lines run from the first saved step (circle) to the final model (star).")
    for task in sorted({r.task for r in runs}):
        rep.h(3, f"Task `{task}`")
        task_runs = [r for r in runs if r.task == task and r.has_features("final")]
        with_steps = [r for r in task_runs if r.feature_steps()]
        if not with_steps:
            rep.missing("no run has probe features at intermediate training steps "
                        "(`features/step_*.npz`); training paths need them.")
            continue
        if len(with_steps) < len(task_runs):
            rep.p(f"{len(task_runs) - len(with_steps)} run(s) without step features appear as single points.")
        paths = maps.training_paths(task_runs, measure=measure, seed=seed)
        rep.csv(paths, f"training_paths_{task}.csv")
        fig, ax = plt.subplots(figsize=(6.5, 5.2))
        maps.plot_training_paths(paths, ax=ax, title=f"{task}: training paths ({measure})", style=rep.style)
        rep.figure(fig, f"training_paths_{task}.png", f"{task}: training paths in one MDS map (seed {seed})")


def section_basins(rep: Report, runs: list[Run], max_pairs: int = 3) -> None:
    """Loss along the straight line between an independent student's weights and the
    cross-distilled student's of the same seed and architecture, on ``test`` and one OOD split."""
    import matplotlib.pyplot as plt

    from analysis.basins import barrier, plot_linear_paths, run_linear_path

    rep.h(2, "Basins")
    rep.p("Loss and accuracy along θ(λ) = (1−λ)·θ_independent + λ·θ_cross-distilled (same seed and "
          "architecture); barrier = max over λ of the loss minus the straight line between the end losses. "
          "A barrier near 0 means both solutions lie in one basin.")
    pairs = []
    for r in runs:
        if r.role == "student" and r.distill == "cross" and (r.objective or "kd") == "kd":
            twins = [o for o in runs if o.role == "student" and o.distill == "none" and o.model == r.model
                     and o.task == r.task and o.seed == r.seed]
            if twins:
                pairs.append((twins[0], r))
    if not pairs:
        rep.missing("no (independent, cross-distilled) student pair of one seed and architecture.")
        return
    rows, paths = [], []
    for task in sorted({a.task for a, _ in pairs}):
        task_pairs = sorted([p for p in pairs if p[0].task == task], key=lambda p: (p[0].model, p[0].seed))
        for a, b in task_pairs[:max_pairs]:
            others = [s for s in a.output_splits() if s != "test"]
            preferred = [s for s in ("translated_s3", "translated", "attractors_4", "test_deep") if s in others]
            splits = ["test"] + (preferred or others)[:1]
            for split in splits:
                try:
                    path = run_linear_path(a, b, split)
                except Exception as exc:  # data not where it was at training time, etc.
                    rep.missing(f"{a.run_id} ↔ {b.run_id} on `{split}`: {exc}")
                    continue
                label = f"{a.model} s{a.seed} · {split}"
                paths.append(path.assign(pair=label, task=task))
                rows.append({"task": task, "model": a.model, "seed": a.seed, "split": split,
                             "barrier": barrier(path["lambda"], path["loss"]),
                             "acc_independent": path["accuracy"].iloc[0],
                             "acc_midpoint": path.loc[(path["lambda"] - 0.5).abs().idxmin(), "accuracy"],
                             "acc_cross": path["accuracy"].iloc[-1]})
    if not rows:
        return
    rep.table(pd.DataFrame(rows), csv="basins.csv")
    allp = pd.concat(paths, ignore_index=True)
    rep.csv(allp, "basin_paths.csv")
    for task, d in allp.groupby("task"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        plot_linear_paths(d, hue="pair", ax=axes[0], metric="loss")
        plot_linear_paths(d, hue="pair", ax=axes[1], metric="accuracy")
        axes[0].get_legend().remove()
        axes[1].set_ylim(0, 1)
        legend_outside(axes[1], title="student pair · split")
        fig.suptitle(f"{task}: independent (λ=0) → cross-distilled (λ=1) student")
        rep.figure(fig, f"basins_{task}.png", f"{task}: loss and accuracy along the line between two students")


def section_drift(rep: Report, runs: list[Run]) -> None:
    """Runs that continued from a distilled student without its teacher (``train.init_from``):
    does the student leave its teacher's basin, and what happens to its OOD accuracy?"""
    drifts = [r for r in runs if r.meta.get("init_from")]
    if not drifts:
        return
    rep.h(2, "Drift without the teacher")
    rep.p("Each row: a distilled student (start) trained on further with labels only (end, `train.init_from`). "
          "Agreement and linear CKA are measured against the start run's teacher; barrier = loss barrier "
          "along the straight line from start to end weights.")
    rows = []
    for r in sorted(drifts, key=lambda r: (r.task, r.model, r.seed)):
        try:
            rows += _drift_rows(rep, r)
        except ArtifactError as exc:  # the start run or its teacher cannot be read
            rep.missing(f"{r.run_id} left out: {exc}")
    if rows:
        rep.table(pd.DataFrame(rows), csv="drift.csv")


def _drift_rows(rep: Report, r: Run) -> list[dict]:
    import os

    from analysis.basins import barrier, run_linear_path
    from analysis.runs import load_run

    start = load_run(os.path.normpath(r.path.parent / r.meta["init_from"]))
    teacher = start.teacher
    others = [s for s in r.output_splits() if s != "test"]
    preferred = [s for s in ("translated_s3", "translated", "attractors_4", "test_deep") if s in others]
    cka = {}
    if teacher is not None:
        tf = teacher.features().features
        cka = {"cka_teacher_start": similarity.linear_cka(start.features().features, tf),
               "cka_teacher_end": similarity.linear_cka(r.features().features, tf)}
    rows = []
    for split in ["test"] + (preferred or others)[:1]:
        row = {"task": r.task, "model": r.model, "seed": r.seed, "start": start.run_id, "split": split,
               "acc_start": start.metrics["splits"][split]["accuracy"],
               "acc_end": r.metrics["splits"][split]["accuracy"], **cka}
        if teacher is not None:
            t = teacher.outputs(split).logits
            row["agree_teacher_start"] = agr.top1_agreement(start.outputs(split).logits, t)
            row["agree_teacher_end"] = agr.top1_agreement(r.outputs(split).logits, t)
        try:
            path = run_linear_path(start, r, split)
            row["barrier"] = barrier(path["lambda"], path["loss"])
        except Exception as exc:  # data not where it was at training time, etc.
            rep.missing(f"{start.run_id} → {r.run_id} on `{split}`: {exc}")
        rows.append(row)
    return rows


def section_calibration(rep: Report, runs: list[Run]) -> None:
    rep.h(2, "Calibration")
    rep.p("ECE with 15 equal-width confidence bins (L1), recomputed from the per-example outputs. "
          "Reliability diagrams pool the examples of all seeds of a configuration; they show `test` and up to "
          "two shifted splits (every split's ECE is in `ece_recomputed.csv`).")
    rel = calibration.reliability_frame(r for r in runs if r.output_splits())
    if rel.empty:
        rep.missing("no run has per-example outputs (`outputs/*.npz`).")
        return
    ece = rel.drop_duplicates(["run", "split"])[["run", "task", "model", "role", "distill", "seed", "split", "ece"]]
    logged = {(r.run_id, sp): r.metrics["splits"].get(sp, {}).get("ece") for r in runs for sp in r.splits}
    ece = ece.assign(ece_logged=[logged.get((a, b)) for a, b in zip(ece["run"], ece["split"])])
    rep.csv(ece, "ece_recomputed.csv")
    diff = (ece["ece"] - ece["ece_logged"].astype(float)).abs()
    bad = ece[diff > 1e-4]
    if len(bad):
        rep.p(f"**Warning:** recomputed ECE differs from metrics.json by > 1e-4 for {len(bad)} run/split "
              "pair(s), see `ece_recomputed.csv`.")
    for task in sorted(rel["task"].unique()):
        task_runs = [r for r in runs if r.task == task and r.output_splits()]
        splits = reliability_splits({s for r in task_runs for s in r.output_splits()})
        pooled = _pooled_reliability(rep, task_runs, splits)
        order = rep.style.order(pooled["config"].unique())
        fig = calibration.plot_reliability_grid(pooled, row="config", col="split", row_order=order,
                                                colors=rep.style.palette(order),
                                                row_labels={c: _wrap(c) for c in order})
        rep.figure(fig, f"reliability_{task}.png", f"{task}: reliability diagrams per configuration on "
                   f"{', '.join(splits)} (examples of all seeds pooled; hatched: the gap between a bin's accuracy "
                   "and its mean confidence)")


#: OOD families in the order their splits are shown in the reliability figure
_SHIFT_PREFERENCE = ("translated", "scaled", "rotated", "sheared", "attractors_4", "attractors", "test_deep")


def reliability_splits(splits: set[str], k: int = 3) -> list[str]:
    """``test`` and up to ``k - 1`` other splits, one per OOD family, each at its middle severity."""
    families: dict[str, list[str]] = {}
    for sp in order_splits(splits):
        if sp != "test":
            families.setdefault(tables.split_severity(sp)[0], []).append(sp)
    ranked = sorted(families, key=lambda f: (next((i for i, p in enumerate(_SHIFT_PREFERENCE) if f.startswith(p)),
                                                   len(_SHIFT_PREFERENCE)), f))
    picked = [members[len(members) // 2] for members in (families[f] for f in ranked)][: k - (1 if "test" in splits else 0)]
    return (["test"] if "test" in splits else []) + picked


def _wrap(label: str, width: int = 22) -> str:
    """A long configuration label on two lines (row labels of a grid)."""
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def _style_row(r: Run) -> dict:
    return {"model": r.model, "role": r.role, "distill": r.distill, "objective": r.objective,
            "teacher_model": r.teacher_model, "transfer": r.transfer, "alpha": r.alpha,
            "temperature": r.temperature, "seed": r.seed}


def _pooled_reliability(rep: Report, runs: list[Run], splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Reliability data per configuration and split, pooling the examples of all its seeds."""
    info = _with_config(rep, pd.DataFrame([_style_row(r) for r in runs]))
    parts = []
    for cfg in sorted(info["config"].unique()):
        members = [r for r, c in zip(runs, info["config"]) if c == cfg]
        have = {s for m in members for s in m.output_splits()}
        for split in order_splits(have if splits is None else have & set(splits)):
            outs = [m.outputs(split) for m in members if split in m.output_splits()]
            logits = np.concatenate([o.logits for o in outs])
            labels = np.concatenate([o.labels for o in outs])
            data = calibration.reliability_data(logits, labels, from_logits=True)
            ece = calibration.expected_calibration_error(logits, labels, from_logits=True)
            parts.append(data.assign(config=cfg, split=split, ece=ece, runs=len(outs)))
    return pd.concat(parts, ignore_index=True)


# --- entry points ----------------------------------------------------------------------------
#: what each section's progress line calls it
SECTION_NAMES = {
    "section_runs": "runs", "section_metrics": "metrics per split", "section_severity": "accuracy vs severity",
    "section_transfer": "transfer ratio", "section_paired": "paired tests", "section_agreement": "agreement",
    "section_similarity": "similarity and MDS maps", "section_paths": "training paths", "section_basins": "basins",
    "section_drift": "drift", "section_calibration": "calibration",
}


class Progress:
    """One line per finished step on stderr: ``[report 6/11] agreement: 4.2s (31s in all)``."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()

    def step(self, what: str) -> None:
        now = time.perf_counter()
        self.done += 1
        if self.enabled:
            print(f"[report {self.done}/{self.total}] {what}: {duration(now - self.last)} "
                  f"({duration(now - self.start)} in all)", file=self.stream, flush=True)
        self.last = now


def build_report(paths: Sequence[str | Path], out: str | Path, *, measure: str = "linear_cka",
                 seed: int = 0, progress: bool = True) -> Path:
    """Write ``out/report.md`` with its figures and CSVs; returns the report's path. With
    ``progress``, a line on stderr after reading the runs and after each section."""
    out = Path(out)
    rep = Report(out)
    steps = Progress(total=1 + len(SECTION_NAMES), enabled=progress)
    with _each_warning_once():
        return _build(rep, steps, paths, measure, seed)


class _OncePerMessage(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.getMessage()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextlib.contextmanager
def _each_warning_once():
    """biaskd's log warnings once each while the report runs (rebuilding a task's data for the
    basins repeats the data's own notes), where nothing else handles them (no logging set up)."""
    log = logging.getLogger("biaskd")
    if logging.getLogger().handlers or log.handlers:
        yield
        return
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.addFilter(_OncePerMessage())
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def _build(rep: Report, steps: Progress, paths: Sequence[str | Path], measure: str, seed: int) -> Path:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = readable_runs(with_teachers(find_runs(*paths)))
        frame = runs_frame(runs)
    steps.step(f"read {len(runs)} run dir(s)")
    rep.style = Style(runs)  # one label and colour per configuration in every table and figure
    rep.lines += ["# biaskd analysis report", "",
                  f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
                  f"`python -m analysis.report`.", ""]
    notes = _notes(caught)
    if notes:
        rep.h(2, "Notes on the inputs")
        rep.lines += [f"- {n}" for n in notes] + [""]
    if not runs:
        rep.missing("no complete run dirs found under " + ", ".join(map(str, paths)) + ".")
        return rep.write()
    sections = [
        (section_runs, runs, frame, [str(p) for p in paths]),
        (section_metrics, frame),
        (section_severity, frame),
        (section_transfer, frame),
        (section_paired, frame),
        (section_agreement, runs),
        (section_similarity, runs, measure, seed),
        (section_paths, runs, measure, seed),
        (section_basins, runs),
        (section_drift, runs),
        (section_calibration, runs),
    ]
    for section, *args in sections:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.filterwarnings("always", message=".*catastrophic cancellation.*", category=RuntimeWarning)
                section(rep, *args)
        except ArtifactError as exc:  # artifacts inconsistent across runs: this section only
            import matplotlib.pyplot as plt

            plt.close("all")
            rep.missing(f"this section stopped: {exc}")
        cancelled = [w for w in caught if "catastrophic cancellation" in str(w.message)]
        if cancelled:  # said in the report, where it matters, instead of on the terminal
            rep.p("Note: some values compared here are (nearly) identical on every seed, so scipy's t statistics "
                  "for them lose precision (its warning); their intervals and p-values are not reliable.")
        for w in caught:
            if w not in cancelled:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # the others as they were
        steps.step(SECTION_NAMES.get(section.__name__, section.__name__))
    return rep.write()


def _notes(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """The warnings' messages, sorted, with one (the first) per run dir a :class:`RunProblem` names."""
    notes: dict[object, str] = {}
    for w in caught:
        key = w.message.path.resolve() if isinstance(w.message, RunProblem) else str(w.message)
        notes.setdefault(key, str(w.message))
    return sorted(set(notes.values()))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run dirs or folders containing run dirs")
    ap.add_argument("--out", required=True, help="output folder for report.md, PNGs and CSVs")
    ap.add_argument("--measure", default="linear_cka", choices=sorted(similarity.MEASURES),
                    help="representational similarity for the heatmap, MDS map and training paths")
    ap.add_argument("--seed", type=int, default=0, help="random_state of the MDS maps")
    ap.add_argument("--wandb", action="store_true",
                    help="also log the report's tables and figures to one W&B run (job_type analysis; offline "
                         "without credentials)")
    ap.add_argument("--wandb-group", default=None,
                    help="W&B group of that run (default: the runs' experiment_name, when they share one)")
    ap.add_argument("--wandb-project", default="biaskd", help="W&B project (default: biaskd, as logger=wandb)")
    args = ap.parse_args(argv)
    path = build_report(args.runs, args.out, measure=args.measure, seed=args.seed)
    print(f"wrote {path}", file=sys.stderr)
    if args.wandb:
        from analysis.dashboard import log_report

        log_report(args.out, group=args.wandb_group or _experiment_group(Path(args.out)), project=args.wandb_project)
    return 0


def _experiment_group(out: Path) -> str | None:
    """The students' ``experiment_name`` when they share one (the W&B group their runs are in)."""
    try:
        runs = pd.read_csv(out / "runs_long.csv", usecols=["role", "experiment"])
    except (FileNotFoundError, ValueError):
        return None
    names = runs.loc[runs["role"] != "teacher", "experiment"].dropna().unique()
    return str(names[0]) if len(names) == 1 else None


if __name__ == "__main__":
    sys.exit(main())
