"""What makes a run dir trustworthy across processes and kills: one writer at a time (a file
lock), a complete run checked against its manifest before it is skipped (or set aside with
``+repair=true``), and an interrupted run resumed from its verified checkpoint with the rows of
its CSV log kept."""
from __future__ import annotations

import contextlib
import csv
import logging
import shutil
import time
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from lightning.pytorch.loggers import CSVLogger

from biaskd.errors import ArtifactError
from biaskd.modules.callbacks import csv_text
from biaskd.record import artifacts, schema
from biaskd.record.artifacts import RunDir

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
    n = 1
    while dest.exists():  # set aside twice within a second: both kept
        n += 1
        dest = dest.with_name(f"{dest.name.rsplit('~', 1)[0]}~{n}")
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
    """The verified ``last.ckpt`` of an interrupted run (stale temporary files removed), or None.
    A damaged checkpoint, or (for a checkpoint that does not hold the log) a CSV log with a
    line that is not a row before its last, raises ArtifactError; with ``repair`` the run dir
    is set aside instead and the run starts anew."""
    if not run.path.exists():
        return None
    for p in artifacts.remove_stale_temporaries(run.path):
        log.info("removed a temporary file left by an interrupted write: %s", p)
    ckpt = run.last_checkpoint
    if ckpt is None:
        return None
    try:
        artifacts.check_file(ckpt)
        if checkpoint_log(ckpt)[1] is None:  # the rows on disk will be kept: they must be rows
            for path in (run / KEPT_LOG, run / schema.LOG):
                _file_rows(path, warn=False)
    except ArtifactError as exc:
        if not repair:
            raise
        set_aside(run, str(exc))
        return None
    return ckpt


#: a resumed run's earlier log rows, kept aside until the logger has written them again
KEPT_LOG = "logs/metrics.resume.csv"

_checkpoint_logs: dict[tuple, tuple[int, str | None]] = {}


def checkpoint_log(ckpt: Path) -> tuple[int, str | None]:
    """A (verified) checkpoint's global step and the CSV log's text when it was written (None
    for a checkpoint written before checkpoints held the log); loaded once per file version."""
    st = ckpt.stat()
    key = (str(ckpt.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _checkpoint_logs:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for truncated or corrupt files
            raise ArtifactError(f"{ckpt}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                                f"{artifacts.REPAIR_HINT}") from None
        text = state.get(schema.CHECKPOINT_LOG)
        _checkpoint_logs.clear()  # one checkpoint at a time
        _checkpoint_logs[key] = (int(state.get("global_step", 0)), text if isinstance(text, str) else None)
    return _checkpoint_logs[key]


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _fields(line: bytes) -> list[str] | None:
    try:
        return next(csv.reader([line.decode().rstrip("\r")]), [])
    except (UnicodeDecodeError, csv.Error):
        return None


def _row(fields: list[str] | None, columns: list[str]) -> dict | None:
    """The non-empty values of a line of the log, if it is a row: one field per column, each a
    number, ``step`` an integer."""
    if fields is None or len(fields) != len(columns):
        return None
    row = {c: v for c, v in zip(columns, fields) if v != ""}
    try:
        for v in row.values():
            _number(v)
        int(row["step"])
    except (ValueError, KeyError):
        return None
    return row


def parse_log(data: bytes, where: str, warn: bool = True) -> list[dict]:
    """The rows of a CSV log (dicts of their non-empty values, as text). Its last line is dropped,
    with a warning, if a kill cut it short (no line end) or it is not a row; any other line that
    is not a header or a row raises ArtifactError naming ``where`` and the line."""
    lines = data.split(b"\n")
    whole = lines[-1] == b""  # the file ends with a line end: nothing was cut short
    if whole:
        lines.pop()
    columns: list[str] = []
    rows = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        fields = _fields(line) if whole or not last else None
        if number == 1:
            if fields and all(fields) and "step" in fields and len(set(fields)) == len(fields):
                columns = fields
                continue
        else:
            row = _row(fields, columns)
            if row is not None:
                rows.append(row)
                continue
        what = "the header" if number == 1 else "a row"
        if not last:
            raise ArtifactError(f"{where}: line {number} is not {what} of the log ({line[:60]!r}); "
                                f"{artifacts.REPAIR_HINT}")
        if warn:
            why = "is not " + what + " of the log" if whole else "was cut short by an interrupted write"
            log.warning("%s: its last line (%d) %s; dropped it (%r)", where, number, why, line[:60])
    return rows


def _file_rows(path: Path, warn: bool = True) -> list[dict]:
    return parse_log(path.read_bytes(), str(path), warn) if path.exists() else []


def keep_csv_log(logger: CSVLogger, run: RunDir, ckpt: Path) -> None:
    """Carry ``logs/metrics.csv`` across a resume from ``ckpt``: Lightning's CSV logger starts the
    file anew, so the rows logged before the checkpoint are replayed through the logger and
    written before training goes on. They come from the checkpoint, which holds the log as it
    was when it was written (:class:`biaskd.modules.callbacks.LogInCheckpoint`); from an older
    checkpoint, the file's rows before its step (later ones are logged again) are copied aside
    first, the last line dropped if a kill cut it short."""
    step, logged = checkpoint_log(ckpt)
    path, kept = run / schema.LOG, run / KEPT_LOG
    if logged is not None:
        rows = parse_log(logged.encode(), f"{ckpt} (the log it holds)")
    else:
        rows, seen = [], set()
        for row in _file_rows(kept) + _file_rows(path):  # kept: a previous resume killed before its first write
            key = tuple(sorted(row.items()))
            if int(row["step"]) < step and key not in seen:
                seen.add(key)
                rows.append(row)
        if rows:
            columns = sorted(set().union(*rows))
            artifacts.atomic_write(kept, lambda f: f.write(csv_text(columns, rows).encode()))
    for row in rows:
        logger.log_metrics({k: _number(v) for k, v in row.items() if k != "step"}, step=int(row["step"]))
    if rows:
        logger.save()
    kept.unlink(missing_ok=True)
