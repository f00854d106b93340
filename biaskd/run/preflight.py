"""Checks a run makes before anything of it is written: the Trainer's settings (keys, accelerator,
what Lightning itself refuses), the number of classes, and whether the runs folder can be
written. Each raises one of the project's errors naming the key or folder; the config-only
checks are in :mod:`biaskd.config`.

Also :func:`storage_error`: the one line a full disk or a read-only folder gives (a
:class:`~biaskd.errors.StorageError`), instead of the library's traceback.
"""
from __future__ import annotations

import contextlib
import errno
import inspect
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biaskd.config import did_you_mean
from biaskd.data.base import is_lm
from biaskd.errors import ConfigError, StorageError

#: ``lightning.Trainer`` arguments every run sets itself (:func:`biaskd.run.train.make_trainer`)
SET_BY_RUN = ("default_root_dir", "logger", "callbacks", "plugins", "num_sanity_val_steps")
#: what a folder that cannot be written reports
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


# -- the Trainer ------------------------------------------------------------------------------------
def check_trainer(tcfg: Mapping[str, Any], prefix: str = "trainer") -> None:
    """Raise ConfigError, naming the key, for a ``trainer`` config that ``lightning.Trainer``
    would refuse: a key that is not one of its arguments (or one every run sets itself), an
    accelerator this machine does not have, any other setting Lightning rejects."""
    import lightning as L

    params = inspect.signature(L.Trainer).parameters
    for key in tcfg:
        if key in SET_BY_RUN:
            raise ConfigError(f"config key '{prefix}.{key}': every run sets the Trainer's {key} itself; "
                              f"remove it from the trainer config")
        if key not in params:
            raise ConfigError(f"config key '{prefix}.{key}' is not an argument of lightning.Trainer"
                              + did_you_mean(key, [p for p in params if p not in SET_BY_RUN], f"{prefix}."))
    check_accelerator(tcfg.get("accelerator", "auto"), f"{prefix}.accelerator")
    _trial_trainer(tcfg, prefix)


def check_accelerator(name: Any, key: str = "trainer.accelerator") -> None:
    """Raise ConfigError if the accelerator ``name`` is unknown or not available here."""
    if not isinstance(name, str) or name.lower() in ("auto", "cpu"):
        return  # an Accelerator instance (library use), or what every machine has
    from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator

    name = name.lower()
    known = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    if name == "gpu":
        available, why = CUDAAccelerator.is_available() or MPSAccelerator.is_available(), "no CUDA or MPS device"
    elif name in AcceleratorRegistry.available_accelerators():
        try:
            accelerator = AcceleratorRegistry.get(name)
            available, why = type(accelerator).is_available(), f"no {name} device"
        except Exception as exc:  # e.g. the XLA (tpu) accelerator without torch_xla
            available, why = False, _one_line(exc)
    else:
        raise ConfigError(f"config key {key!r} must be one of {', '.join(known)}; got {name!r}"
                          + did_you_mean(name, known))
    if not available:
        raise ConfigError(f"config key {key!r}: accelerator {name!r} is not available on this machine ({why}); "
                          f"use trainer=cpu or trainer.accelerator=cpu")


def _trial_trainer(tcfg: Mapping[str, Any], prefix: str) -> None:
    """Construct a Trainer from ``tcfg`` (and the checkpoint callback and plugin every run has),
    so that whatever else Lightning refuses (precision, strategy, devices) is said before the run
    dir exists. Construction writes nothing; the global torch flags it sets are restored."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from biaskd.modules.callbacks import AtomicCheckpointIO
    from biaskd.quiet import quiet_libraries

    quiet_libraries()
    root = Path(tempfile.gettempdir()) / "biaskd-trainer-check"  # never created: a Trainer writes on fit
    with _torch_flags_kept():
        try:
            L.Trainer(**tcfg, default_root_dir=str(root), logger=False, num_sanity_val_steps=0,
                      callbacks=[ModelCheckpoint(dirpath=str(root / "checkpoints"), filename="last")],
                      plugins=[AtomicCheckpointIO()])
        except Exception as exc:
            raise ConfigError(f"config key {prefix!r}: lightning.Trainer refuses these settings: "
                              f"{type(exc).__name__}: {_one_line(exc)}") from None


@contextlib.contextmanager
def _torch_flags_kept():
    """Restore the process-wide torch settings a Trainer's construction sets (deterministic
    algorithms, cuDNN flags, the cuBLAS workspace variable)."""
    import torch

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        yield
    finally:
        algorithms, warn_only, fill, benchmark, cudnn_deterministic, cublas = saved
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


# -- the data -----------------------------------------------------------------------------------------
def check_classes(data: Any, task_name: str) -> None:
    """A classification task needs at least two classes (the metrics and the loss need them)."""
    if is_lm(data):
        return
    n = int(data.num_classes)
    if n < 2:
        raise ConfigError(f"config key 'task.num_classes': task {task_name!r} has {n} class(es); a classifier "
                          f"needs at least 2")


# -- storage ------------------------------------------------------------------------------------------
def check_writable(folder: str | os.PathLike, key: str = "runs_dir") -> None:
    """Raise StorageError naming ``folder`` if a file cannot be created in it (or, where it does
    not exist yet, in the folder it would be made in)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"{key} {folder} cannot be made: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".biaskd-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"{key} {folder} is not writable ({exc.strerror or exc}); choose another with "
                           f"{key}=...") from None


def storage_error(exc: BaseException, where: str | os.PathLike | None = None) -> StorageError | None:
    """The StorageError an OSError of a full disk or an unwritable folder stands for, or None for
    any other exception."""
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return None
    what = exc.strerror or os.strerror(exc.errno)
    path = exc.filename or where
    place = f" writing {path}" if path else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space and run the same command again (an interrupted run resumes)"
    else:
        advice = "make it writable or choose another runs_dir=..."
    return StorageError(f"{what}{place}; {advice}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
