"""What a Hydra multirun leaves in its sweep folder, and how far along it is.

Each job writes ``run.txt`` (the run dir it produced) into its own Hydra folder
(``<sweep>/<job>/``); a failed one writes ``failed.txt`` instead (:mod:`biaskd.cli`). At the end
the sweep folder gets

* ``runs.txt`` -- the run dirs of the sweep's jobs, one a line, relative to the sweep folder
  (so ``python -m analysis.report <sweep folder>`` reads them, and the pair moves as a whole);
* ``summary.csv`` -- mean ± 95% CI over seeds per configuration, split and metric
  (accuracy, ECE, agreement with the teacher, …), the teachers included;
* ``summary.md`` -- the same as tables a person reads.

Everything is read back from the sweep folder and the run dirs, not from the process that
launched the jobs, so jobs run by the joblib or SLURM launchers count the same way. Progress
(:func:`progress_line`) counts finished job folders against the sweep's size, computed from
Hydra's ``multirun.yaml`` (the sweeper's parameters and the command line's sweeps).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

RUN_FILE = "run.txt"  # in a job's Hydra folder: the run dir the job produced
RUNS_FILE = "runs.txt"  # in the sweep folder: every job's run dir
FAILURE_FILE = "failed.txt"  # in a failed job's Hydra folder: what failed, one line (biaskd.cli)
#: metrics of the per-configuration summary (others stay in the run dirs and the report)
SUMMARY_METRICS = ("accuracy", "a_accuracy", "d_accuracy", "perplexity", "ece", "teacher_agreement", "teacher_js")


def record_job(job_dir: str | Path, run_path: str | Path) -> None:
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / RUN_FILE).write_text(str(Path(run_path).resolve()) + "\n")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")] if sweep_dir.is_dir() else []
    return sorted(dirs, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))


def sweep_size(sweep_dir: str | Path) -> int | None:
    """Number of jobs the sweep in ``sweep_dir`` launches (from its ``multirun.yaml``), or None
    when that cannot be told (no file, a sweeper other than Hydra's basic one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.load(path)
        if "BasicSweeper" not in str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")):
            return None
        params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
        overrides = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
        sizes: dict[str, int] = {}  # a key given twice: the later one counts, as in the sweeper
        for o in OverridesParser.create().parse_overrides(overrides):
            sizes[o.get_key_element()] = len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
        return math.prod(sizes.values())
    except Exception:  # an override this reader does not understand: no total, progress still counts
        return None


def duration(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def progress_line(sweep_dir: str | Path, now: float | None = None) -> str | None:
    """``[sweep] 3/12 jobs done (1 failed) · 1m20s elapsed · about 3m50s left``; None outside a sweep."""
    sweep_dir = Path(sweep_dir)
    started = sweep_dir / "multirun.yaml"
    if not started.is_file():
        return None
    jobs = _job_dirs(sweep_dir)
    done = sum((j / RUN_FILE).exists() or (j / FAILURE_FILE).exists() for j in jobs)
    failed = sum((j / FAILURE_FILE).exists() for j in jobs)
    total = sweep_size(sweep_dir)
    elapsed = (now or time.time()) - started.stat().st_mtime
    text = f"[sweep] {done}/{total if total else '?'} jobs done"
    if failed:
        text += f" ({failed} failed)"
    text += f" · {duration(elapsed)} elapsed"
    if total and 0 < done < total:
        text += f" · about {duration(elapsed / done * (total - done))} left"
    return text


def sweep_runs(sweep_dir: str | Path) -> list[Path]:
    """The run dirs the sweep's jobs produced, in job order, each once."""
    found: dict[Path, None] = {}
    for job in _job_dirs(Path(sweep_dir)):
        f = job / RUN_FILE
        if f.is_file():
            found.setdefault(Path(f.read_text().strip()), None)
    return list(found)


def write_runs_file(sweep_dir: str | Path, runs: list[Path]) -> Path:
    sweep_dir = Path(sweep_dir)
    lines = [os.path.relpath(r, sweep_dir) for r in runs]
    path = sweep_dir / RUNS_FILE
    path.write_text("".join(line + "\n" for line in lines))
    return path


def summary_frames(run_paths: list[Path]):
    """(tidy summary, wide accuracy table, wide teacher table) of the runs and their teachers:
    mean ± 95% CI over seeds per configuration (``analysis.tables.summarize``)."""
    import pandas as pd

    from analysis import figures, tables
    from analysis.runs import load_run, order_splits, runs_frame, with_teachers

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
    from analysis.report import markdown_table

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
