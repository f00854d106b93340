"""What makes a run dir trustworthy across processes and kills: one writer at a time (a file
lock), a complete run checked against its manifest before it is skipped (or set aside with
``+repair=true``), and an interrupted run resumed from its verified checkpoint with the rows of
its CSV log kept."""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout
from lightning.pytorch.loggers import CSVLogger

from biaskd import artifacts
from biaskd.artifacts import RunDir
from biaskd.errors import ArtifactError

log = logging.getLogger("biaskd")


@contextlib.contextmanager
def run_lock(run: RunDir):
    """One writer per run dir: a file lock beside it. A second process with the same run waits
    (saying so), then finds the run complete."""
    run.path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run.path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process training %s", run.path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def set_aside(run: RunDir, why: str) -> Path:
    """Move a bad run dir to ``.bad/`` beside it (hidden from analysis, nothing deleted)."""
    dest = run.path.parent / ".bad" / f"{run.path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run.path), str(dest))
    log.warning("%s; moved it to %s and training the run anew", why, dest)
    return dest


def checked_complete(run: RunDir, repair: bool) -> bool:
    """Whether ``run`` is complete and its files match its manifest. A complete run that fails
    verification raises ArtifactError naming the bad file(s), or with ``repair`` is set aside."""
    if not run.is_complete:
        return False
    problems = run.verify()
    if not problems:
        return True
    if repair:
        set_aside(run, f"{run.path} failed verification ({problems[0]})")
        return False
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ArtifactError(f"{problems[0]}{more}")


def resume_checkpoint(run: RunDir, repair: bool) -> Path | None:
    """The verified ``last.ckpt`` of an interrupted run (stale temporary files removed), or None."""
    if not run.path.exists():
        return None
    for p in artifacts.remove_stale_temporaries(run.path):
        log.info("removed a temporary file left by an interrupted write: %s", p)
    ckpt = run.last_checkpoint
    if ckpt is None:
        return None
    try:
        artifacts.check_file(ckpt)
        _check_readable(ckpt)
    except ArtifactError as exc:
        if not repair:
            raise
        set_aside(run, str(exc))
        return None
    return ckpt


def _check_readable(ckpt: Path) -> None:
    """Raise ArtifactError naming ``ckpt`` if it cannot be loaded (a checkpoint with no digest to
    check it against, e.g. one cut short by a full disk)."""
    import torch

    try:
        torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ArtifactError(f"{ckpt}: cannot be read as a checkpoint ({reason}); rerun its command with "
                            f"+repair=true to retrain the run (the bad run dir is kept aside)") from None


def _csv_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def keep_csv_log(logger: CSVLogger, run: RunDir, resume_step: int) -> None:
    """Carry ``logs/metrics.csv`` across a resume: Lightning's CSV logger starts the file anew,
    so the rows logged before the checkpoint (step < ``resume_step``; later ones are logged
    again) are copied aside, replayed through the logger and written before training goes on."""
    path, kept = run / "logs" / "metrics.csv", run / "logs" / "metrics.resume.csv"
    rows, seen = [], set()
    for row in _csv_rows(kept) + _csv_rows(path):  # kept: a previous resume killed before its first write
        key = tuple(sorted(row.items()))
        if "step" in row and int(_number(row["step"])) < resume_step and key not in seen:
            seen.add(key)
            rows.append(row)
    if not rows:
        return
    columns = sorted(set().union(*rows))
    artifacts.atomic_write(kept, lambda f: f.write(_csv_text(columns, rows).encode()))
    for row in rows:
        logger.log_metrics({k: _number(v) for k, v in row.items() if k != "step"}, step=int(_number(row["step"])))
    logger.save()
    kept.unlink()
