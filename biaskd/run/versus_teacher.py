"""Did the student move toward its teacher? The run's own answer, logged where people look.

At the end of a student run (distilled, or independent where its teacher is known), per eval
split:

* ``teacher_agreement`` -- top-1 agreement with the teacher;
* ``teacher_js`` -- mean Jensen–Shannon divergence of the two output distributions (nats);

and on the probe set ``teacher_cka``, linear CKA of the student's features with the teacher's.
They go into ``metrics.json`` (``splits.<split>.teacher_*``, ``probe.teacher_cka``, and
``teacher``: which teacher they compare with) and, with ``logger=wandb``, into the W&B run
(``<split>/teacher_agreement``, ``<split>/teacher_js``, ``probe/teacher_cka``). The measures are
:mod:`biaskd.pairwise`, the ones :mod:`analysis.agreement` and :mod:`analysis.similarity`
compute from run dirs, on the same saved arrays, so dashboard and report show one number.

Which teacher: a self-/cross-distilled student's own; an online student's co-trained teacher as
it ended; an independent student's is the teacher a distilled run of the same config would use
(``model@teacher.model``, seed + ``teacher.seed_offset``), compared with when its run is already
complete (``teacher.compare=auto``, the default), found or trained first (``true``), or never
(``false``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig

from biaskd import config as config_mod
from biaskd.data.base import Split
from biaskd.data.base import is_lm
from biaskd.errors import ArtifactError
from biaskd.modes import mode_of
from biaskd.modules.callbacks import batched_features
from biaskd.modules.lm import lm_scores
from biaskd.pairwise import from_logits, js_divergence, linear_cka, top1_agreement
from biaskd.record.artifacts import RunDir
from biaskd.record.identity import run_dir_for
from biaskd.run.predict import predict_logits
from biaskd.run.rebuild import load_model

@dataclass
class TeacherComparison:
    """The teacher a student is compared with, its per-split logits and the measures."""

    teacher: dict  # model, run_id and run (relative to the student's run dir's parent) or source=online
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # split -> teacher logits (student's order)
    splits: dict[str, dict] = field(default_factory=dict)  # split -> {teacher_agreement, teacher_js}
    probe: dict = field(default_factory=dict)  # {teacher_cka, n}

    def add_to(self, metrics: dict) -> None:
        """Into ``metrics.json``'s dict: per split beside accuracy, probe and teacher at the top."""
        for split, values in self.splits.items():
            metrics["splits"].setdefault(split, {}).update(values)
        if self.probe:
            metrics["probe"] = dict(self.probe)
        metrics["teacher"] = dict(self.teacher)

    def scalars(self) -> dict[str, float]:
        """Flat W&B keys: ``<split>/teacher_agreement``, ``<split>/teacher_js``, ``probe/teacher_cka``."""
        out = {f"{s}/{k}": float(v) for s, m in self.splits.items() for k, v in m.items()}
        if "teacher_cka" in self.probe:
            out["probe/teacher_cka"] = float(self.probe["teacher_cka"])
        return out


def compare_setting(cfg: DictConfig) -> str | bool:
    """``teacher.compare``: ``"auto"``, True or False (checked by :func:`biaskd.config.validate`)."""
    return (cfg.get("teacher") or {}).get("compare", "auto")


def _independent_student(cfg: DictConfig) -> bool:
    return (cfg.get("role", "student") != "teacher" and not mode_of(cfg).distilled
            and compare_setting(cfg) is not False and (cfg.get("teacher") or {}).get("model") is not None)


def prepare(cfg: DictConfig, data, ensure_teacher) -> None:
    """With ``teacher.compare=true``, find or train an independent student's teacher before the
    student trains (as a distilled student's is), with the driver's ``ensure_teacher(cfg, data)``,
    so the comparison at the end finds it."""
    if _independent_student(cfg) and compare_setting(cfg) is True:
        ensure_teacher(cfg, data)


def reference_teacher(cfg: DictConfig, data, teacher_run: RunDir | None,
                      teacher_model: torch.nn.Module | None) -> tuple[RunDir | None, torch.nn.Module | None]:
    """The teacher (run dir and/or in-memory model) a student run is compared with, or (None, None).

    Distilled runs bring theirs; an independent student's is the complete, intact run of the
    teacher a distilled run of its config would use, on the same data, if there is one."""
    if cfg.get("role", "student") == "teacher":
        return None, None
    if mode_of(cfg).distilled:
        return teacher_run, teacher_model
    if not _independent_student(cfg):
        return None, None
    run = run_dir_for(config_mod.teacher_config(cfg), data)
    if run.is_complete and not run.verify():
        return run, None
    return None, None


def _saved_rows(run: RunDir | None, load, ids: np.ndarray, key: str) -> np.ndarray | None:
    """``key`` of a file of the teacher's run dir when it covers exactly ``ids`` in order."""
    if run is None:
        return None
    try:
        saved = load()
    except (ArtifactError, FileNotFoundError, OSError):
        return None
    if key in saved and np.array_equal(saved["ids"], ids):
        return saved[key]
    return None


def compare(cfg: DictConfig, data, run: RunDir, probe: Split, student_features: torch.Tensor,
            teacher_run: RunDir | None, teacher_model: torch.nn.Module | None,
            batch_size: int = 1024) -> TeacherComparison | None:
    """Agreement, JS divergence and probe CKA of the student in ``run`` (its eval outputs are
    already saved) with its teacher; None when it has none. The teacher's own saved outputs and
    probe features are used where they cover the same examples (what the analysis reads), else
    the teacher model is run on them."""
    teacher_run, teacher_model = reference_teacher(cfg, data, teacher_run, teacher_model)
    if teacher_run is None and teacher_model is None:
        return None
    def model() -> torch.nn.Module:
        nonlocal teacher_model
        if teacher_model is None:
            teacher_model = load_model(teacher_run, data)
        return teacher_model

    if teacher_run is not None:
        tmeta = teacher_run.meta
        info = {"model": tmeta.get("model"), "run_id": tmeta.get("run_id", teacher_run.path.name),
                "run": os.path.relpath(teacher_run.path, run.path.parent)}
    else:
        info = {"model": str(cfg.teacher.model.name), "source": "online"}
    result = TeacherComparison(info)
    for name, split in data.evals.items():
        student = run.outputs(name)
        ids = student["ids"]
        logits = _saved_rows(teacher_run, lambda: teacher_run.outputs(name), ids, "logits")
        if logits is None:
            t = model()
            logits = (lm_scores(t, split, batch_size).verb_logits if is_lm(data)
                      else predict_logits(t, split.x, batch_size)).numpy()
        ps, pt = from_logits(student["logits"]), from_logits(logits)
        result.logits[name] = np.asarray(logits)
        result.splits[name] = {"teacher_agreement": top1_agreement(ps, pt), "teacher_js": js_divergence(ps, pt)}
    probe_ids = probe.ids.numpy() if hasattr(probe.ids, "numpy") else np.asarray(probe.ids)
    feats = _saved_rows(teacher_run, lambda: teacher_run.features("final"), probe_ids, "features")
    if feats is None:
        feats = batched_features(model(), probe.x).numpy()
    result.probe = {"teacher_cka": linear_cka(student_features, feats), "n": int(len(probe_ids))}
    return result


def log_to_wandb(loggers: list, comparison: TeacherComparison | None) -> None:
    """The measures into each W&B run's summary and one small table ``teacher/agreement``
    (split, agreement, JS; the probe CKA, when measured, as its own row in a column of its own),
    beside the per-step history."""
    if comparison is None:
        return
    for lg in loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        lg.experiment.summary.update(comparison.scalars())
        columns = ["split", "teacher_agreement", "teacher_js"]
        rows = [[s, m["teacher_agreement"], m["teacher_js"]] for s, m in comparison.splits.items()]
        if comparison.probe:  # a CKA column only when there is a probe CKA to put in it
            columns.append("teacher_cka")
            rows = [[*row, None] for row in rows] + [["probe", None, None, comparison.probe["teacher_cka"]]]
        lg.log_table(key="teacher/agreement", columns=columns, data=rows)
