"""What a Hydra multirun leaves in its sweep folder, and how far along it is.

Each job writes ``run.txt`` (the run dir it produced) into its own Hydra folder
(``<sweep>/<job>/``); a failed one writes ``failed.txt`` instead (:mod:`biaskd.tools.cli`: the line the
sweep printed, and below it the traceback of an exception that is not the project's own). At the end
the sweep folder gets

* ``runs.txt`` -- the run dirs of the sweep's jobs, one a line, relative to the sweep folder
  (so ``python -m analysis.report <sweep folder>`` reads them, and the pair moves as a whole);
* ``summary.csv`` -- mean ± 95% CI over seeds per configuration, split and metric
  (accuracy, ECE, agreement with the teacher, …), the teachers included;
* ``summary.md`` -- the same as tables a person reads.

The two summaries are the analysis package's (:mod:`analysis.sweep_summary`); the Hydra callback
(:class:`biaskd.tools.cli.SummaryCallback`) is given that function by the config
(``hydra.callbacks.summary.summarize``), so training code never imports the analysis.

Everything is read back from the sweep folder and the run dirs, not from the process that
launched the jobs, so jobs run by the joblib or SLURM launchers count the same way. Progress
(:func:`progress_line`) counts finished job folders against the sweep's size, computed from
Hydra's ``multirun.yaml`` (the sweeper's parameters and the command line's sweeps). Its estimate
of the time left counts teachers apart from students (:func:`teachers_left`): a job that trains a
teacher first takes much longer than one that finds it in the cache.
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

RUN_FILE = "run.txt"  # in a job's Hydra folder: the run dir the job produced
RUNS_FILE = "runs.txt"  # in the sweep folder: every job's run dir
FAILURE_FILE = "failed.txt"  # in a failed job's Hydra folder: what failed, one line (biaskd.tools.cli)
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


def _multirun_config(sweep_dir: Path):
    """The sweep's ``multirun.yaml`` as a config, or None (no file, a sweeper other than Hydra's
    basic one, whose jobs this reader cannot list)."""
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.load(path)
    except Exception:
        return None
    return cfg if "BasicSweeper" in str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")) else None


def _job_overrides(sweep_dir: Path) -> list[frozenset[str]] | None:
    """Every job's overrides (``key=value``), from ``multirun.yaml``; None when that cannot be told."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cfg = _multirun_config(sweep_dir)
    if cfg is None:
        return None
    try:
        params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
        overrides = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
        values: dict[str, list[str]] = {}  # a key given twice: the later one counts, as in the sweeper
        for o in OverridesParser.create().parse_overrides(overrides):
            key = o.get_key_element().lstrip("+~")
            values[key] = [f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else \
                [f"{key}={o.get_value_element_as_str()}"]
        return [frozenset(job) for job in itertools.product(*values.values())]
    except Exception:  # an override this reader does not understand: no total, progress still counts
        return None


def sweep_size(sweep_dir: str | Path) -> int | None:
    """Number of jobs the sweep in ``sweep_dir`` launches (from its ``multirun.yaml``), or None
    when that cannot be told (no file, a sweeper other than Hydra's basic one)."""
    jobs = _job_overrides(Path(sweep_dir))
    return None if jobs is None else len(jobs)


#: overrides that choose the teacher, or whether there is one, rather than set its training
_TEACHER_CHOICE = ("model", "model@teacher.model", "distill", "teacher.compare")


def _teacher_key(overrides: frozenset[str], defaults: dict[str, str]) -> tuple | None:
    """What tells a job's teacher apart, read from its overrides (``defaults``: the sweep's values
    of :data:`_TEACHER_CHOICE`): which model teaches (the student's own for ``distill=self``) and
    every other override but how the student is distilled (``distill.*``) and its extra inputs
    (``transfer*``); None for a job without a teacher (``distill=none`` not compared with one)."""
    pairs = {**defaults, **dict(o.split("=", 1) for o in sorted(overrides) if "=" in o)}
    mode, compare = pairs.get("distill"), str(pairs.get("teacher.compare")).lower()
    if mode == "none" and compare != "true":
        return None
    teacher = pairs.get("model") if mode == "self" else pairs.get("model@teacher.model")
    rest = ((k, v) for k, v in pairs.items() if k not in _TEACHER_CHOICE and not k.startswith(("distill.", "transfer")))
    return ("teacher", teacher, *sorted(rest))


def _sweep_defaults(sweep_dir: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    cfg = _multirun_config(sweep_dir)
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}
    out = {k: str(choices[k]) for k in ("model", "model@teacher.model", "distill") if k in choices}
    out["teacher.compare"] = str(OmegaConf.select(cfg, "teacher.compare", default="auto"))
    return out


def teachers_left(sweep_dir: str | Path, started: float) -> tuple[int, float, float] | None:
    """``(teachers the remaining jobs will train, their expected seconds, seconds this sweep has
    spent training teachers so far)``. A remaining job trains a teacher when no finished job had
    the same one (:func:`_teacher_key`; one cached before the sweep is counted as to train); a
    teacher's time is the mean training time of the teachers this sweep trained, else of those it
    found in the cache. None when the jobs cannot be listed."""
    from biaskd.record.artifacts import RunDir, teacher_of

    sweep_dir = Path(sweep_dir)
    remaining = _job_overrides(sweep_dir)
    if remaining is None:
        return None
    defaults = _sweep_defaults(sweep_dir)
    seen = set()
    trained, cached = {}, {}  # teacher dir -> training seconds
    for job in _job_dirs(sweep_dir):
        if not ((job / RUN_FILE).exists() or (job / FAILURE_FILE).exists()):
            continue
        try:
            lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
        except OSError:
            continue
        mine = frozenset(line[2:].strip().lstrip("+~") for line in lines if line.startswith("- "))
        if remaining:  # what is left: the jobs not finished yet
            remaining.remove(mine if mine in remaining else remaining[0])
        seen.add(_teacher_key(mine, defaults))
        try:
            teacher = teacher_of(RunDir(Path((job / RUN_FILE).read_text().strip())))
            finished = (teacher.path / "COMPLETE").stat().st_mtime
            seconds = float(teacher.metrics["train"]["wall_time_s"])
        except Exception:  # a failed job, no teacher, or one this reader cannot read: no teacher time from it
            continue
        (trained if finished >= started else cached)[teacher.path] = seconds
    new = {k for k in (_teacher_key(j, defaults) for j in remaining) if k is not None and k not in seen}
    times = list(trained.values()) or list(cached.values())
    mean = sum(times) / len(times) if times else 0.0
    return len(new), len(new) * mean, sum(trained.values())


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
    """``[sweep] 3/12 jobs done (1 failed) · 1m20s elapsed · about 3m50s left (students 2m10s +
    2 teacher(s) to train, about 1m40s)``; None outside a sweep. Students are timed at the pace of
    the jobs so far without their teachers' training, teachers at the pace of the teachers."""
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
        teachers = teachers_left(sweep_dir, started.stat().st_mtime)
        if teachers is None:
            text += f" · about {duration(elapsed / done * (total - done))} left"
        else:  # students at the pace of the students so far, teachers at the pace of teachers
            n, expected, spent = teachers
            students = max(0.0, elapsed - spent) / done * (total - done)
            text += f" · about {duration(students + expected)} left"
            text += (f" (students {duration(students)} + {n} teacher(s) to train, about {duration(expected)})" if n
                     else " (no teacher left to train)")
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
