"""A student's teacher: :class:`Teacher` (a model and, when it was trained first, its run dir;
the driver obtains it as the mode says, :data:`biaskd.run.train.OBTAIN_TEACHER`), and its outputs
cached in its own run dir (:func:`teacher_cache`): computed once per (teacher, data), read by every
student distilled from it. A teacher's generated sentences (sequence-level KD) are
:mod:`biaskd.run.teacher_sentences`."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from biaskd.data.datamodule import TaskData
from biaskd.errors import ArtifactError
from biaskd.objectives import Outputs
from biaskd.record import artifacts
from biaskd.record.artifacts import RunDir
from biaskd.run.predict import predict_features_and_logits, predict_logits

log = logging.getLogger("biaskd")


@dataclass
class Teacher:
    """A student's teacher: a trained run (``run``) or, for online KD, a model trained alongside."""

    model: torch.nn.Module
    run: RunDir | None = None


def _cached_rows(path: Path, key: str, ids: torch.Tensor) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        cached = artifacts.load_npz(path)
    except ArtifactError as exc:  # derived data: computed again
        log.warning("teacher cache damaged, recomputing it: %s", exc)
        return None
    if key in cached and len(cached[key]) == len(ids) and np.array_equal(cached["ids"], ids.numpy()):
        return torch.from_numpy(cached[key])
    log.warning("teacher cache %s does not match the data; recomputing", path)
    return None


def teacher_cache(teacher_run: RunDir, teacher: torch.nn.Module, data: TaskData, name: str = "train",
                  features: bool = False, split=None) -> Outputs:
    """Teacher logits (and with ``features=True`` its ``features(x)``) on the training set (or
    on ``split``, e.g. training set + transfer inputs), computed once per (teacher, data) and
    stored in the teacher's run dir: ``NAME-FP.npz`` and ``NAME-features-FP.npz``. The file
    names carry the data fingerprint (and ``split``'s), so changed data (or a retrained teacher,
    which lives in a new dir) never reuses stale outputs."""
    fp = data.fingerprint()
    if split is None or split is data.train:
        split = data.train
    else:
        name, fp = "fit", artifacts.config_hash({"data": fp, "split": split.fingerprint()}, length=16)
    folder = teacher_run / "teacher_cache"
    paths = {"logits": folder / f"{name}-{fp}.npz"}
    if features:
        paths["features"] = folder / f"{name}-features-{fp}.npz"
    with FileLock(str(paths["logits"]) + ".lock"):
        for p in artifacts.remove_stale_temporaries(folder, of=paths.values()):  # a killed writer's, under its lock
            log.info("removed a temporary file left by an interrupted write: %s", p)
        found = {key: _cached_rows(path, key, split.ids) for key, path in paths.items()}
        missing = [key for key, value in found.items() if value is None]
        if missing:  # one teacher pass fills every missing file
            if "features" in missing:
                computed = dict(zip(("features", "logits"), predict_features_and_logits(teacher, split.x)))
            else:
                computed = {"logits": predict_logits(teacher, split.x)}
            for key in missing:
                found[key] = computed[key]
                artifacts.save_npz(paths[key], digest=True, **{key: computed[key]}, ids=split.ids)
    return Outputs(found["logits"], found.get("features"))
