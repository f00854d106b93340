"""The report's sections on what the runs predict: which runs, their metrics per eval split
(and against OOD severity), the transfer ratio, paired tests, agreement with the teacher and
calibration. Each ``section_*`` reads runs (or their tidy frame) and writes into a
:class:`analysis.markdown.Report`; :func:`analysis.report.build_report` calls them in order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from analysis import agreement as agr
from analysis import calibration, figures, tables
from analysis.markdown import Report
from analysis.runs import Run, is_independent, order_splits
from analysis.style import metric_label

#: Metrics shown in the per-split tables when present (others still go to the CSV).
HEADLINE_METRICS = ("accuracy", "a_accuracy", "d_accuracy", "ece", "perplexity")
#: Metadata keys with at most this many values get an agreement breakdown.
MAX_GROUP_VALUES = 20


def with_config(rep: Report, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["config"] = rep.style.labels(frame)
    return frame


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
    summary = with_config(rep, summary)
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
    summary = with_config(rep, tables.summarize(acc))
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


def agreement_pairs(runs: list[Run]) -> tuple[list[tuple[Run, Run]], list[str]]:
    """(student, teacher) for every student with a loadable teacher, plus, as a baseline,
    (independent run of the student's model, same teacher) matched by seed when possible."""
    pairs, problems = [], []
    indep = [r for r in runs if not r.mode.distilled]
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


def agreement_configs(at: pd.DataFrame, style) -> tuple[pd.DataFrame, list[str]]:
    """An agreement table (:func:`analysis.agreement.agreement_table`) with its ``config`` labels
    -- an independent student, compared with every teacher of its seed, once per teacher:
    ``mlp independent (vs cnn teacher)`` -- and the order that puts the configurations compared
    with one teacher side by side (independent, self-distilled, distilled)."""
    from analysis.style import KINDS, kind

    at = at.assign(config=style.labels(at))
    none = is_independent(at)
    at.loc[none, "config"] = at.loc[none, "config"] + " (vs " + at.loc[none, "reference_model"] + " teacher)"
    ranks = {c: (str(ref), KINDS.get(kind(row), KINDS["other"])[1])
             for c, ref, row in zip(at["config"], at["reference_model"], at.to_dict("records"))}
    return at, sorted(ranks, key=lambda c: (*ranks[c], c))


def section_agreement(rep: Report, runs: list[Run]) -> None:
    rep.h(2, "Prediction agreement with the teacher")
    rep.p("Top-1 agreement, mean Jensen–Shannon divergence (nats, ≤ ln 2) and error consistency "
          "(Cohen's κ on correctness; – when both models are right, or both wrong, on every example). "
          "Rows with distill = none compare an independently trained student of the same model and "
          "seed with the same teacher: the baseline a distilled student should exceed.")
    pairs, problems = agreement_pairs(runs)
    for msg in problems:
        rep.missing(msg)
    if not pairs:
        rep.missing("no run with a loadable teacher, so no teacher–student agreement.")
        return
    keys = _group_keys([p[0] for p in pairs])
    at = agr.agreement_table(pairs, by=keys or None)
    rep.csv(at, "agreement.csv")
    at, order = agreement_configs(at, rep.style)
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
        fig, axes = plt.subplots(2, 1, figsize=(max(4.0, 0.9 * n_split * n_config ** 0.5 + 2) + 4.0, 6.6), sharex=True,
                                 layout="constrained")  # + room for the legend beside the bars
        for ax, m in zip(axes, ["top1_agreement", "error_consistency"]):
            figures.plot_bars_ci(s[s["metric"] == m], ax=ax, ylabel=m, metric=m, order=order,
                                 title=f"{task}: {metric_label(m)} with the teacher", style=rep.style,
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


def style_row(r: Run) -> dict:
    return {"model": r.model, "role": r.role, "distill": r.distill, "objective": r.objective,
            "teacher_model": r.teacher_model, "transfer": r.transfer, "alpha": r.alpha,
            "temperature": r.temperature, "seed": r.seed}


def _pooled_reliability(rep: Report, runs: list[Run], splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Reliability data per configuration and split, pooling the examples of all its seeds."""
    info = with_config(rep, pd.DataFrame([style_row(r) for r in runs]))
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
