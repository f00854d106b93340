"""The summary a multirun leaves in its sweep folder: ``summary.csv`` and ``summary.md``.

After a sweep, :class:`biaskd.cli.SummaryCallback` calls :func:`write_summary` (named in the
config, ``hydra.callbacks.summary.summarize``): the sweep's run dirs (listed in ``runs.txt``,
:mod:`biaskd.sweep`) and their teachers, mean ± 95% CI over seeds per configuration, split and
metric, as a CSV and as Markdown tables.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from biaskd.sweep import RUNS_FILE, sweep_runs, write_runs_file

from analysis import figures, tables
from analysis.markdown import markdown_table
from analysis.runs import load_run, order_splits, runs_frame, with_teachers

#: metrics of the per-configuration summary (others stay in the run dirs and the report)
SUMMARY_METRICS = ("accuracy", "a_accuracy", "d_accuracy", "perplexity", "ece", "teacher_agreement", "teacher_js")


def summary_frames(run_paths: list[Path]):
    """(tidy summary, wide accuracy table, wide teacher table) of the runs and their teachers:
    mean ± 95% CI over seeds per configuration (``analysis.tables.summarize``)."""
    runs = with_teachers(load_run(p) for p in run_paths)
    frame = runs_frame(runs)
    probe = [{**frame[frame["run"] == r.run_id].iloc[0].to_dict(), "split": "probe", "metric": "teacher_cka",
              "value": float(r.metrics["probe"]["teacher_cka"])}
             for r in runs if (r.metrics.get("probe") or {}).get("teacher_cka") is not None and
             (frame["run"] == r.run_id).any()]
    frame = pd.concat([frame, pd.DataFrame(probe, columns=frame.columns)], ignore_index=True) if probe else frame
    frame = frame[frame["metric"].isin(SUMMARY_METRICS + ("teacher_cka",))]
    summary = tables.summarize(frame)
    summary.insert(0, "configuration", figures.config_label(summary))
    # teachers first, then the configurations in the order the sweep ran them
    per_run = frame.drop_duplicates("run")
    first = {c: i for i, c in enumerate(dict.fromkeys(figures.config_label(per_run)))}
    summary = summary.sort_values("configuration", kind="stable",
                                  key=lambda c: c.map(first) + 1000 * (summary["role"] != "teacher"))

    def wide(metrics: list[str], extra: dict[str, str] | None = None):
        part = summary[summary["metric"].isin(metrics) & (summary["split"] != "probe")]
        if part.empty:
            return None
        w = part.pivot_table(index="configuration", columns="split", values="text", aggfunc="first", sort=False)
        w = w[order_splits(w.columns)]
        seeds = summary.groupby("configuration", sort=False)["seeds"].first()
        w.insert(0, "seeds", seeds.reindex(w.index))
        for column, (metric, split) in (extra or {}).items():
            sel = summary[(summary["metric"] == metric) & (summary["split"] == split)].set_index("configuration")
            if len(sel):
                w[column] = sel["text"].reindex(w.index)
        return w.reset_index()

    accuracy = wide(["accuracy"], {"test ECE": ("ece", "test")})
    teacher = wide(["teacher_agreement"], {"probe CKA": ("teacher_cka", "probe")})
    return summary, accuracy, teacher


def write_summary(sweep_dir: str | Path, failed: int = 0) -> tuple[Path, str] | None:
    """``runs.txt``, ``summary.csv`` and ``summary.md`` in ``sweep_dir``; returns the path of
    ``summary.md`` and the accuracy table as text, or None when no job produced a run."""
    sweep_dir = Path(sweep_dir)
    runs = sweep_runs(sweep_dir)
    if not runs:
        return None
    write_runs_file(sweep_dir, runs)
    summary, accuracy, teacher = summary_frames(runs)
    summary.to_csv(sweep_dir / "summary.csv", index=False)
    n_seeds = summary["n"].max() if len(summary) else 0
    lines = [f"# Sweep summary: `{sweep_dir}`", "",
             f"{len(runs)} run(s) from the sweep's jobs" + (f", {failed} job(s) failed" if failed else "") +
             f"; their teachers included. Mean ± 95% CI over seeds (Student t)"
             + ("" if n_seeds > 1 else "; every configuration ran with one seed, so no intervals") + ".",
             f"Run dirs: [`{RUNS_FILE}`]({RUNS_FILE}); every number: [`summary.csv`](summary.csv); the full "
             f"analysis: `python -m analysis.report {sweep_dir} --out <folder>`.", ""]
    if accuracy is not None:
        lines += ["## Accuracy per eval split", "", markdown_table(accuracy), ""]
    if teacher is not None:
        lines += ["## Top-1 agreement with the teacher", "",
                  "Per eval split; `probe CKA` = linear CKA of the probe-set features with the teacher's. "
                  "Independent students are compared with the teacher a distilled run of their config uses, "
                  "where that teacher's run was complete.", "", markdown_table(teacher), ""]
    path = sweep_dir / "summary.md"
    path.write_text("\n".join(lines))
    text = accuracy.to_string(index=False) if accuracy is not None else ""
    return path, text
