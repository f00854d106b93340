"""Run directories on disk: atomic writes, integrity checks, and :class:`RunDir`, the one writer
(and low-level reader) of the format :mod:`biaskd.record.schema` defines.

Every file is written to a temporary name in the same folder and renamed into place, so a
killed process never leaves a half-written file under a real name; it gets the permissions the
umask gives any new file. Files that change or appear after a run completes (``last.ckpt``,
``teacher_cache/*``) carry their own digest in a ``<file>.sha256`` sidecar; the others are
listed in ``MANIFEST.json``. Every loader here checks the file against its digest (hashed once
per process and file version) and loads with ``torch.load(weights_only=True)`` /
``numpy.load(allow_pickle=False)``; a missing, truncated, corrupt or altered file raises
:class:`ArtifactError` naming it. ``MANIFEST.json`` records a digest of its own entries, so a
damaged manifest is named as such; a complete run of a format that writes one and has none
(or has lost its meta.json) is damaged too (:func:`biaskd.record.schema.unverifiable`).
"""
from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import io
import json
import os
import socket
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biaskd.errors import ArtifactError
from biaskd.record import schema
from biaskd.record.schema import COMPLETE, DIGEST_SUFFIX, FAILED, MANIFEST, TMP_SUFFIX

#: how a person gets a damaged run trained anew (the training command's way out)
REPAIR_HINT = "rerun its command with +repair=true to retrain it (the bad run dir is kept aside)"

_umask: int | None = None


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the process's umask (read once)."""
    global _umask
    if _umask is None:
        _umask = os.umask(0o022)
        os.umask(_umask)
    return 0o666 & ~_umask


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None], digest: bool = False) -> Path:
    """Write a file through ``write(fileobj)`` to a temp name, fsync, then rename into place.

    With ``digest=True`` a ``<name>.sha256`` sidecar records the file's SHA-256. It is updated
    around the rename so that it accepts whichever version is in place should the process be
    killed in between.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if digest:
            new = file_digest(tmp)
            old = _sidecar_digests(path) if path.exists() else []
            _write_sidecar(path, [new, *old[:1]])
        os.replace(tmp, path)
        if digest:
            _write_sidecar(path, [new])
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def remove_stale_temporaries(folder: str | Path, of: Iterable[str | Path] | None = None) -> list[Path]:
    """Delete temporary files a killed writer left in ``folder`` (call only while holding the
    lock of what they were written for, so that no live writer's file is removed). With ``of``,
    only those of the files named there (and of their digest sidecars), in ``folder`` itself."""
    if of is None:
        found = Path(folder).rglob(f".*{TMP_SUFFIX}")
    else:  # atomic_write's temporary names: .<name>.<random>.tmp
        found = (p for name in of for p in Path(folder).glob(f".{glob.escape(Path(name).name)}.*{TMP_SUFFIX}"))
    removed = []
    for p in found:
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# -- integrity ----------------------------------------------------------------------------------
def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_digests: dict[tuple, str] = {}
_manifests: dict[tuple, dict] = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def cached_digest(path: str | Path) -> str:
    """SHA-256 of ``path``, computed once per process for each version of the file."""
    key = _stat_key(Path(path))
    if key not in _digests:
        _digests[key] = file_digest(path)
    return _digests[key]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def _write_sidecar(path: Path, digests: list[str]) -> None:
    text = "".join(f"{d}  {path.name}\n" for d in digests).encode()
    atomic_write(_sidecar(path), lambda f: f.write(text))


def _sidecar_digests(path: Path) -> list[str]:
    try:
        return [line.split()[0] for line in _sidecar(path).read_text().splitlines() if line.strip()]
    except (FileNotFoundError, IndexError, UnicodeDecodeError):
        return []


def _manifest_of(run_path: Path) -> dict | None:
    mpath = run_path / MANIFEST
    try:
        key = _stat_key(mpath)
    except FileNotFoundError:
        return None
    if key not in _manifests:
        try:
            manifest = json.loads(mpath.read_text())
            files = manifest["files"]
            recorded = manifest.get("files_sha256")  # absent from manifests written before it was
            if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
                raise TypeError("'files' is not an object of entries")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{mpath}: corrupt manifest ({type(exc).__name__}: {exc}); {REPAIR_HINT}") from None
        if recorded is not None and recorded != _entries_digest(files):
            raise ArtifactError(f"{mpath}: damaged manifest (its entries do not match the SHA-256 it records of "
                                f"them); {REPAIR_HINT}")
        _manifests[key] = files
    return _manifests[key]


def _entries_digest(files: Any) -> str:
    """SHA-256 of a manifest's entries: a damaged digest in it names the manifest, not its file."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _listed(rel: Path) -> bool:
    return rel.name not in schema.UNLISTED_NAMES and not rel.name.endswith((DIGEST_SUFFIX, TMP_SUFFIX, ".lock")) \
        and not (len(rel.parts) > 1 and rel.parts[0] in schema.UNLISTED_DIRS)


def write_manifest(run_path: str | Path) -> Path:
    """Record the size and SHA-256 of every file the run dir holds (see module docstring)."""
    run_path = Path(run_path)
    files = {}
    for p in sorted(run_path.rglob("*")):
        rel = p.relative_to(run_path)
        if p.is_file() and not p.is_symlink() and _listed(rel):
            files[rel.as_posix()] = {"size": p.stat().st_size, "sha256": cached_digest(p)}
    return write_json(run_path / MANIFEST,
                      {"algorithm": "sha256", "files": files, "files_sha256": _entries_digest(files)})


def _problem(path: Path) -> tuple[str, bool] | None:
    """(why ``path`` fails, whether the fault is its run's rather than the file's), or None."""
    expected = _sidecar_digests(path)
    where = f"its digest file {_sidecar(path).name}"
    if not expected:
        for root in (path.parent, path.parent.parent):
            manifest = _manifest_of(root)
            if manifest is not None:
                entry = manifest.get(path.relative_to(root).as_posix())
                if entry is None:
                    return None
                if path.stat().st_size != entry["size"]:
                    return f"{path.stat().st_size} bytes, but the run's {MANIFEST} records {entry['size']}", False
                expected, where = [entry["sha256"]], f"the run's {MANIFEST}"
                break
        else:  # no manifest: fine for a format-1 or an incomplete run, damage for any other
            root = next((r for r in (path.parent, path.parent.parent) if schema.looks_like_run_dir(r)), None)
            problem = schema.unverifiable(root) if root is not None and _listed(path.relative_to(root)) else None
            return (problem, True) if problem else None
    if cached_digest(path) not in expected:
        return f"contents do not match the SHA-256 in {where}", False
    return None


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` fails the digest recorded for it (its sidecar, or the manifest of the run dir
    it lies in), in a few words; None if it passes or nothing records it. A file of a complete
    run that should have a manifest and has none fails (:func:`biaskd.record.schema.unverifiable`)."""
    found = _problem(Path(path))
    return found[0] if found else None


def check_file(path: str | Path) -> None:
    """Raise ArtifactError if ``path`` differs from the digest recorded for it (its sidecar, or
    the manifest of the run dir it lies in), or lies in a complete run that lost its manifest
    (:func:`biaskd.record.schema.unverifiable`). Files with no recorded digest pass."""
    path = Path(path)
    found = _problem(path)
    if found is None:
        return
    problem, of_run = found
    if of_run:
        raise ArtifactError(f"{path}: cannot be checked: {problem}; {REPAIR_HINT}")
    raise ArtifactError(f"{path}: {problem}: the file was changed or damaged after it was written; {REPAIR_HINT}")


def verify_run(run_path: str | Path) -> list[str]:
    """Problems with a complete run's files (missing, resized or altered since its manifest was
    written; ``last.ckpt`` against its sidecar), one string each; empty if it verifies. A
    format-1 run (no manifest) has nothing to verify against and passes; a complete run of a
    later format without its manifest, or without meta.json, does not (:func:`biaskd.record.schema.unverifiable`).
    Teacher caches are not the run's results: a damaged one is recomputed when next read."""
    run_path = Path(run_path)
    try:
        manifest = _manifest_of(run_path)
    except ArtifactError as exc:
        return [str(exc)]
    if manifest is None:
        problem = schema.unverifiable(run_path)
        return [f"{problem}; {REPAIR_HINT}"] if problem else []
    problems = []
    for rel, entry in manifest.items():
        p = run_path / rel
        if not p.is_file():
            problems.append(f"{p}: missing (listed in {MANIFEST}); {REPAIR_HINT}")
            continue
        try:
            check_file(p)
        except ArtifactError as exc:
            problems.append(str(exc))
    for p in run_path.rglob(f"*{DIGEST_SUFFIX}"):
        target = p.with_name(p.name[: -len(DIGEST_SUFFIX)])
        if target.is_file() and schema.TEACHER_CACHE not in target.relative_to(run_path).parts:
            try:
                check_file(target)
            except ArtifactError as exc:
                problems.append(str(exc))
    return problems


def write_json(path: str | Path, obj: Any) -> Path:
    data = json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        check_file(path)
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def save_npz(path: str | Path, digest: bool = False, **arrays: Any) -> Path:
    arrays = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()}
    return atomic_write(path, lambda f: np.savez(f, **arrays), digest=digest)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file is missing")
    check_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ArtifactError(f"{path}: corrupt or truncated array file ({exc})") from None


def save_state_dict(path: str | Path, state: dict[str, torch.Tensor]) -> Path:
    state = {k: v.detach().cpu() for k, v in state.items()}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a tensor-only file with ``weights_only=True`` (no code execution on load)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file is missing")
    check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt/unsafe files
        raise ArtifactError(f"{path}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def config_hash(obj: Any, length: int = 10) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    data = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(data).hexdigest()[:length]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """A run directory on disk (layout: :mod:`biaskd.record.schema`): its state, the writer of its
    files and their checked, raw loaders."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- state ------------------------------------------------------------------------------
    @property
    def is_complete(self) -> bool:
        return (self.path / COMPLETE).exists()

    @property
    def is_failed(self) -> bool:
        return (self.path / FAILED).exists()

    def require_complete(self) -> "RunDir":
        if not self.path.is_dir():
            raise ArtifactError(f"{self.path}: run dir does not exist")
        if self.is_failed:
            reason = read_json(self.path / FAILED).get("reason", "?")
            raise ArtifactError(f"{self.path}: run failed ({reason})")
        if not self.is_complete:
            raise ArtifactError(f"{self.path}: run dir is incomplete (no {COMPLETE} marker; interrupted or running)")
        return self

    def mark_complete(self, **info: Any) -> None:
        """Write the manifest of everything the run holds, then the COMPLETE marker."""
        fail = self.path / FAILED
        if fail.exists():
            fail.unlink()
        write_manifest(self.path)
        # the format (a complete run of a format with manifests and none is damaged) and the
        # process that finished it (a job that waited for another process to train it says so)
        write_json(self.path / COMPLETE, {"finished": now(), "format_version": schema.FORMAT_VERSION,
                                          "host": socket.gethostname(), "pid": os.getpid(), **info})

    def verify(self) -> list[str]:
        """Problems with this run's files against its manifest (see :func:`verify_run`)."""
        return verify_run(self.path)

    def mark_failed(self, reason: str) -> None:
        write_json(self.path / FAILED, {"failed": now(), "reason": reason})

    def reset_outcome(self) -> None:
        """Forget an earlier outcome before (re)training in this dir."""
        for name in (COMPLETE, FAILED, MANIFEST):
            p = self.path / name
            if p.exists():
                p.unlink()

    # -- writing ------------------------------------------------------------------------------
    def write_meta(self, meta: dict) -> Path:
        return write_json(self.path / schema.META, meta)

    def write_config(self, text: str) -> Path:
        return write_text(self.path / schema.CONFIG, text)

    def write_metrics(self, metrics: dict) -> Path:
        return write_json(self.path / schema.METRICS, metrics)

    def write_outputs(self, split: str, logits, labels, ids, meta: dict | None = None) -> Path:
        """``outputs/<split>.npz``: per-example logits, labels, ids and ``meta_<key>`` arrays."""
        return save_npz(self.path / schema.outputs_file(split), **schema.outputs_arrays(
            _numpy(logits), _numpy(labels), _numpy(ids), {k: _numpy(v) for k, v in (meta or {}).items()}))

    def write_features(self, step: int | str, features, ids, recorded_step: int) -> Path:
        """Probe-set features at a training-path ``step`` (or ``"final"``), recorded at ``recorded_step``."""
        return save_npz(self.path / schema.features_file(step), features=features, ids=ids, step=recorded_step)

    def write_weights(self, step: int | str, state: dict[str, torch.Tensor]) -> Path:
        """A state dict at a training-path ``step`` (``checkpoints/step_*.pt``) or at the end (``model.pt``)."""
        return save_state_dict(self.path / schema.weights_file(step), state)

    # -- reading ------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return read_json(self.path / schema.META)

    @property
    def metrics(self) -> dict:
        return read_json(self.path / schema.METRICS)

    def outputs(self, split: str) -> dict[str, np.ndarray]:
        return load_npz(self.path / schema.outputs_file(split))

    def features(self, step: int | str = "final") -> dict[str, np.ndarray]:
        return load_npz(self.path / schema.features_file(step))

    def state_dict(self, step: int | str = "final") -> dict[str, torch.Tensor]:
        return load_state_dict(self.path / schema.weights_file(step))

    def steps(self, folder: str, suffix: str) -> dict[int, Path]:
        """Training-path files (``step_*.<suffix>``) in ``folder`` by step, ascending."""
        d = self.path / folder
        if not d.is_dir():
            return {}
        found = {step: p for p in d.iterdir() if (step := schema.step_of(p.name, suffix)) is not None}
        return dict(sorted(found.items()))

    @property
    def teacher_dir(self) -> "RunDir | None":
        """The teacher's run dir: ``meta.teacher_run`` is relative to this run dir's parent
        (so a sweep folder can be moved or copied as a whole) or absolute."""
        ref = self.meta.get("teacher_run")
        if not ref:
            return None
        p = Path(ref)
        return RunDir(p if p.is_absolute() else os.path.normpath(self.path.parent / p))

    @property
    def last_checkpoint(self) -> Path | None:
        p = self.path / schema.LAST_CHECKPOINT
        return p if p.exists() else None


def with_teachers(runs: Iterable[Any], teacher_of: Callable[[Any], Any], key: Callable[[Any], str],
                  on_error: Callable[[Any, ArtifactError], None] | None = None) -> list:
    """``runs`` plus every teacher they name (``teacher_of(run)``, None for none) that is not among
    them already (as the same dir, or the same ``key``: the run id), each once, after them. A
    teacher ``teacher_of`` cannot give (ArtifactError) is left out; ``on_error`` hears of it."""
    unique: dict[Path, Any] = {}
    for run in runs:
        unique.setdefault(Path(run.path).resolve(), run)  # each dir once
    runs = list(unique.values())
    dirs, keys = set(unique), {key(r) for r in runs}
    out = list(runs)
    for run in runs:
        try:
            teacher = teacher_of(run)
        except ArtifactError as exc:
            if on_error is not None:
                on_error(run, exc)
            continue
        if teacher is None or Path(teacher.path).resolve() in dirs or key(teacher) in keys:
            continue
        dirs.add(Path(teacher.path).resolve())
        keys.add(key(teacher))
        out.append(teacher)
    return out


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def teacher_of(run: RunDir) -> RunDir | None:
    """The run dir of ``run``'s teacher: its own, or the one an independent run is compared with."""
    ref = (run.metrics.get("teacher") or {}).get("run")
    return run.teacher_dir or (RunDir(run.path.parent / ref) if ref else None)
