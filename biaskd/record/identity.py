"""Who a run is: its run dir's name and folder (from its config hash) and its ``meta.json``."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from biaskd import config as config_mod
from biaskd.data import transfer as transfer_mod
from biaskd.data.base import setup_of
from biaskd.data.build import absolute
from biaskd.data.datamodule import TaskData
from biaskd.modes import mode_of
from biaskd.objectives import objective_options
from biaskd.record import artifacts, schema
from biaskd.record.artifacts import RunDir
from biaskd.record.reproduce import machine_signature
from biaskd.scenario import declared as declared_scenario


def task_name(cfg: DictConfig, setup: str) -> str:
    """The task a run is filed under: LM runs are their own task for analysis (``sva_lm``; their
    metrics are not comparable with classification)."""
    return f"{cfg.task.name}_lm" if setup == "lm" else str(cfg.task.name)


def run_name(cfg: DictConfig, digest: str, setup: str) -> str:
    """``<task>-<model>-<mode>[-<objective>][-from-<teacher>][-<transfer>]-s<seed>-<digest>``;
    ``setup``: the task data's (:func:`biaskd.data.base.setup_of`)."""
    mode = mode_of(cfg)
    role = cfg.get("role", "student")
    parts = [task_name(cfg, setup), cfg.model.name]
    if role != "teacher":
        parts.append(mode.name)
        objective = cfg.distill.get("objective") or "kd"
        if mode.distilled and objective != "kd":
            parts.append(objective)
        if mode.teacher_from_config:
            parts.append(f"from-{cfg.teacher.model.name}")
        transfer_part = transfer_mod.run_name_part(transfer_mod.spec_of(cfg))
        if transfer_part:
            parts.append(transfer_part)
    parts += [f"s{cfg.seed}", digest]
    return "-".join(str(p) for p in parts)


def run_dir_for(cfg: DictConfig, data: TaskData) -> RunDir:
    digest = config_mod.run_hash(cfg, data.fingerprint())
    root = absolute(cfg.runs_dir)
    folder = "teachers" if cfg.get("role", "student") == "teacher" else str(cfg.experiment_name)
    return RunDir(root / folder / run_name(cfg, digest, setup_of(data)))


def _versions() -> dict[str, str]:
    import lightning
    import torchmetrics

    import biaskd

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "numpy": np.__version__,
        "biaskd": biaskd.__version__,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def data_summary(data: TaskData) -> dict:
    """Sizes of every split and where the data came from, for meta.json."""
    if hasattr(data, "summary"):
        return data.summary()
    sizes = {"train": len(data.train), "valid": len(data.valid), **{k: len(v) for k, v in data.evals.items()}}
    return {"task": data.task, "sizes": sizes, "source": getattr(data, "source", None),
            "fingerprint": data.fingerprint()}


def run_meta(cfg: DictConfig, data: TaskData, run: RunDir, teacher_run: RunDir | None, digest: str,
             init_from: RunDir | None = None) -> dict:
    """The run's ``meta.json`` (keys: README, "Run directory format")."""
    mode = mode_of(cfg)
    distilled = mode.distilled
    setup = setup_of(data)
    return {
        "format": schema.FORMAT,
        "format_version": schema.FORMAT_VERSION,
        "run_id": run.path.name,
        "name": run.path.name,
        "task": task_name(cfg, setup),
        "setup": setup,
        "data": data_summary(data),
        "model": cfg.model.name,
        "role": cfg.get("role", "student"),
        "distill": mode.name,
        "objective": cfg.distill.get("objective", "kd") if distilled else None,
        "objective_options": objective_options(cfg.distill) if distilled else None,
        "teacher_run": os.path.relpath(teacher_run.path, run.path.parent) if teacher_run else None,
        "teacher_run_id": teacher_run.path.name if teacher_run else None,
        "init_from": os.path.relpath(init_from.path, run.path.parent) if init_from else None,
        "teacher_model": mode.teacher_model(cfg).name if distilled else None,
        "seed": int(cfg.seed),
        "alpha": float(cfg.distill.alpha) if distilled else None,
        "temperature": float(cfg.distill.temperature) if distilled else None,
        "config_hash": digest,
        "data_fingerprint": data.fingerprint(),
        "experiment": str(cfg.experiment_name),
        "scenario": declared_scenario(cfg, setup).to_dict(),
        "num_classes": int(data.num_classes),
        "eval_splits": sorted(data.evals),
        "probe": {"split": data.probe_split, "n": int(len(data.probe))},
        "versions": _versions(),
        "machine": machine_signature(),  # what decides the floating-point bits (biaskd.record.reproduce)
        "git_commit": _git_commit(),
        "started": artifacts.now(),
    }
