"""The report's sections on representations and weights: CKA (or another similarity) between
the runs' probe features with MDS maps, training paths, loss basins between students, and the
drift of a student trained on without its teacher. Each ``section_*`` writes into a
:class:`analysis.markdown.Report`; :func:`analysis.report.build_report` calls them in order.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from biaskd.errors import ArtifactError

from analysis import agreement as agr
from analysis import figures, maps, similarity, tables
from analysis.markdown import Report
from analysis.runs import Run, is_independent
from analysis.sections_metrics import agreement_pairs, style_row, with_config
from analysis.style import legend_outside, metric_label, split_label


def _label_map(rep: Report, runs: Sequence[Run]) -> dict[str, str]:
    return {r.run_id: rep.style.run_label(r) for r in runs}


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
            fig, ax = plt.subplots(figsize=(min(18.0, 5.5 + 0.6 * len(S)), min(17.0, 3.5 + 0.55 * len(S))),
                                   layout="constrained")
            figures.plot_similarity_heatmap(S, _label_map(rep, have), ax=ax, measure=measure,
                                            title=f"{task}: {metric_label(measure)} of the runs' probe features "
                                                  f"({len(S)} runs)")
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
    pairs, _ = agreement_pairs(runs)
    if not any(s.run_id in S.index and t.run_id in S.index for s, t in pairs):
        rep.missing(f"no student with a teacher among the runs with features: no {measure} to teacher.")
        return
    d = pd.DataFrame([{**style_row(s), "value": S.loc[s.run_id, t.run_id], "reference": t.model}
                      for s, t in pairs if s.run_id in S.index and t.run_id in S.index])
    d = with_config(rep, d)
    none = is_independent(d)
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
        if r.role == "student" and r.mode.cross_distilled and (r.objective or "kd") == "kd":
            twins = [o for o in runs if o.role == "student" and not o.mode.distilled and o.model == r.model
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
                label = f"{a.model} seed {a.seed} · {split_label(split)}"
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
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        plot_linear_paths(d, hue="pair", ax=axes[0], metric="loss")
        plot_linear_paths(d, hue="pair", ax=axes[1], metric="accuracy")
        axes[1].set_ylim(0, 1.02)
        legend_outside(axes[1], title=f"student pair · split ({d['pair'].nunique()} paths)")
        fig.suptitle(f"{task}: run A = the independent student, run B = the cross-distilled one "
                     "(same seed and architecture)", fontsize=10)
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
