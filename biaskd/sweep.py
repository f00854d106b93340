"""What a Hydra multirun leaves in its sweep folder, and how far along it is.

Each job writes ``run.txt`` (the run dir it produced) into its own Hydra folder
(``<sweep>/<job>/``); a failed one writes ``failed.txt`` instead (:mod:`biaskd.cli`: the line the
sweep printed, and below it the traceback of an exception that is not the project's own). At the end
the sweep folder gets

* ``runs.txt`` -- the run dirs of the sweep's jobs, one a line, relative to the sweep folder
  (so ``python -m analysis.report <sweep folder>`` reads them, and the pair moves as a whole);
* ``summary.csv`` -- mean ± 95% CI over seeds per configuration, split and metric
  (accuracy, ECE, agreement with the teacher, …), the teachers included;
* ``summary.md`` -- the same as tables a person reads.

The two summaries are the analysis package's (:mod:`analysis.sweep_summary`); the Hydra callback
(:class:`biaskd.cli.SummaryCallback`) is given that function by the config
(``hydra.callbacks.summary.summarize``), so training code never imports the analysis.

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
#: in a failure file, below its line: the traceback of an exception that is not the project's own
TRACEBACK_HEAD = "Traceback (most recent call last):"


def record_job(job_dir: str | Path, run_path: str | Path) -> None:
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / RUN_FILE).write_text(str(Path(run_path).resolve()) + "\n")


def failure_is_bug(report: str | Path) -> bool:
    """Whether the job whose ``failed.txt`` is ``report`` was stopped by an exception that is not
    one of the project's own errors (its traceback follows the line)."""
    try:
        return TRACEBACK_HEAD in Path(report).read_text()
    except OSError:
        return False


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
