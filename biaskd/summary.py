"""Human-readable summaries of finished runs: one line per job, one table per sweep."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from biaskd.artifacts import RunDir


def run_label(meta: dict) -> str:
    if meta.get("role") == "teacher":
        return f"{meta['model']} (teacher)"
    mode = meta.get("distill", "none")
    objective = meta.get("objective")
    how = "" if objective in (None, "kd") else f" ({objective})"
    transfer = meta.get("transfer") or {}
    if transfer.get("n"):
        labels = "gold" if transfer.get("gold_labels") else "teacher-labelled"
        how += f" +{transfer['n']} {transfer.get('source')} inputs ({labels})"
    if mode == "none":
        return f"{meta['model']} independent{how}"
    if mode == "self":
        return f"{meta['model']} self-distilled{how}"
    return f"{meta['model']} {mode}-distilled from {meta.get('teacher_model')}{how}"


def summary_line(run: RunDir) -> str:
    meta, metrics = run.meta, run.metrics
    accs = " ".join(f"{s}={m['accuracy']:.3f}" for s, m in metrics["splits"].items())
    return f"[{run_label(meta)} seed={meta['seed']}] {accs} ({metrics['train']['wall_time_s']:.0f}s) -> {run.path}"


def with_teachers(runs: Iterable[RunDir]) -> list[RunDir]:
    """The runs plus the teachers they name (each once), teachers first."""
    seen: dict[Path, RunDir] = {}
    students = []
    for run in runs:
        t = run.teacher_dir
        if t is not None:
            if t.is_complete:
                seen.setdefault(t.path.resolve(), t)
        students.append(run)
    for run in students:
        seen.setdefault(run.path.resolve(), run)
    teachers = [r for r in seen.values() if r.meta.get("role") == "teacher"]
    others = [r for r in seen.values() if r.meta.get("role") != "teacher"]
    return teachers + others


def summary_table(runs: Iterable[RunDir], metric: str = "accuracy") -> pd.DataFrame:
    rows = []
    for run in with_teachers(runs):
        meta, metrics = run.meta, run.metrics
        row = {"run": run_label(meta), "seed": meta["seed"]}
        for split, m in metrics["splits"].items():
            row[split] = m.get(metric)
        if "test" in metrics["splits"]:
            row["test ECE"] = metrics["splits"]["test"]["ece"]
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(df: pd.DataFrame) -> str:
    return df.to_string(index=False, float_format=lambda v: f"{v:.4f}")
