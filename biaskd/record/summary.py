"""A finished run read for people: one line per job (the ``biaskd`` command prints it after each),
tables after a single run. The analysis of many runs is :mod:`analysis.sweep_summary`."""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable

import pandas as pd

from biaskd import modes
from biaskd.record import artifacts
from biaskd.record.artifacts import RunDir, teacher_of


def run_label(meta: dict) -> str:
    """A run's label (:func:`biaskd.modes.run_label`) from its meta.json, with its transfer inputs."""
    text = modes.run_label(meta["model"], meta.get("distill"), meta.get("teacher_model"), meta.get("objective"),
                           meta.get("role"))
    transfer = meta.get("transfer") or {}
    if transfer.get("n") and meta.get("role") != "teacher":
        labels = "gold" if transfer.get("gold_labels") else "teacher-labelled"
        text += f" +{transfer['n']} {transfer.get('source')} inputs ({labels})"
    return text


def data_label(meta: dict) -> str:
    """What a run trained on, from its meta.json: ``4,500 embedded training examples``."""
    data = meta.get("data") or {}
    n = (data.get("sizes") or {}).get("train")
    source = data.get("source")
    kind = source.get("train_source") if isinstance(source, dict) else source
    if n is None:
        return ""
    return f"{n:,} {kind} training examples" if kind else f"{n:,} training examples"


def _finished(run: RunDir) -> float:
    return (run.path / "COMPLETE").stat().st_mtime


def finished_elsewhere(run: RunDir) -> bool:
    """Whether another process finished ``run`` (its COMPLETE marker names the host and process
    that wrote it; a marker without them says nothing)."""
    try:
        marker = json.loads((run.path / "COMPLETE").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or "pid" not in marker:
        return False
    return (marker.get("host"), marker.get("pid")) != (socket.gethostname(), os.getpid())


def teacher_trained_since(run: RunDir, since: float) -> RunDir | None:
    """The teacher of ``run`` (its own, or the one an independent run is compared with) if
    that teacher's run finished after ``since`` in this process, i.e. the job that made ``run``
    trained it."""
    teacher = teacher_of(run)
    if teacher is None or not teacher.is_complete:
        return None
    return teacher if _finished(teacher) >= since and not finished_elsewhere(teacher) else None


def teacher_measures_text(metrics: dict) -> str:
    """`` · agreement with cnn 0.888 (mean of 6 eval splits), probe CKA 0.712`` from a run's
    metrics.json, or ``""`` when it was compared with no teacher."""
    agreement = [m["teacher_agreement"] for m in metrics["splits"].values() if m.get("teacher_agreement") is not None]
    cka = (metrics.get("probe") or {}).get("teacher_cka")
    if not agreement and cka is None:
        return ""
    teacher = (metrics.get("teacher") or {}).get("model") or "the teacher"
    parts = []
    if agreement:
        n = len(agreement)
        parts.append(f"agreement with {teacher} {sum(agreement) / n:.3f}"
                     + (f" (mean of {n} eval splits)" if n > 1 else ""))
    if cka is not None:
        parts.append(f"probe CKA {cka:.3f}" if agreement else f"probe CKA with {teacher} {cka:.3f}")
    return " · " + ", ".join(parts)


def summary_line(run: RunDir, since: float | None = None) -> str:
    """``[mlp distilled from cnn seed=1] test=0.912 … · agreement with cnn 0.888 (mean of 6 eval
    splits), probe CKA 0.712 (trained in 12s; its teacher in 41s) -> dir``.

    With ``since`` (when the job started), a run that was already complete says so, one that
    another process trained while the job waited for it too, and a teacher the job trained
    first is timed on its own."""
    from biaskd.record.sweep import duration

    meta, metrics = run.meta, run.metrics
    accs = " ".join(f"{s}={m['accuracy']:.3f}" for s, m in metrics["splits"].items())
    accs += teacher_measures_text(metrics)
    if since is not None and _finished(run) < since:
        when = "complete already"
    elif since is not None and finished_elsewhere(run):
        when = "found complete: another process trained it while this job waited"
    else:
        when = f"trained in {duration(metrics['train']['wall_time_s'])}"
        teacher = teacher_trained_since(run, since) if since is not None else None
        if teacher is not None:
            when += f"; its teacher {teacher.meta['model']} in {duration(teacher.metrics['train']['wall_time_s'])}"
    if data_label(meta):
        when += f"; {data_label(meta)}"
    return f"[{run_label(meta)} seed={meta['seed']}] {accs} ({when}) -> {run.path}"


def _complete_teacher(run: RunDir) -> RunDir | None:
    teacher = run.teacher_dir
    return teacher if teacher is not None and teacher.is_complete else None


def with_teachers(runs: Iterable[RunDir]) -> list[RunDir]:
    """The runs plus the complete teachers they name (each once), teachers first."""
    runs = artifacts.with_teachers(runs, _complete_teacher, lambda r: r.path.name)
    return sorted(runs, key=lambda r: r.meta.get("role") != "teacher")  # stable: teachers first


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


def teacher_table(runs: Iterable[RunDir]) -> pd.DataFrame:
    """Per student run compared with a teacher: top-1 agreement per eval split, the mean JS
    divergence over them and the probe CKA (empty when no run has a teacher to compare with)."""
    rows = []
    for run in runs:
        metrics = run.metrics
        splits = {s: m["teacher_agreement"] for s, m in metrics["splits"].items() if m.get("teacher_agreement") is not None}
        if not splits:
            continue
        js = [m["teacher_js"] for m in metrics["splits"].values() if m.get("teacher_js") is not None]
        rows.append({"run": run_label(run.meta), "seed": run.meta["seed"],
                     "teacher": (metrics.get("teacher") or {}).get("model"), **splits,
                     "JS (mean)": sum(js) / len(js) if js else None,
                     "probe CKA": (metrics.get("probe") or {}).get("teacher_cka")})
    return pd.DataFrame(rows)


def format_table(df: pd.DataFrame) -> str:
    return df.to_string(index=False, float_format=lambda v: f"{v:.4f}")
