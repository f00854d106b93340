"""Synthetic run dirs for the analysis tests, written by the one writer of the format
(:class:`biaskd.record.artifacts.RunDir`) from arrays: per seed a teacher, an independently trained
student and distilled students whose logits and features are a controllable mix of the
teacher's and their own (``closeness`` 0 = independent, 1 = a copy of the teacher).

The metrics in ``metrics.json`` are computed from the arrays by training's own
:func:`biaskd.metrics.split_metrics`. Tests that need what real training does use tiny real runs
(``tests/test_pinned.py``, ``tests/analysis/test_analysis_real_runs.py``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import yaml

from biaskd.metrics import split_metrics
from biaskd.record import schema
from biaskd.record.artifacts import RunDir

SPLITS = {
    "mnist": ("test", "translated", "scaled"),
    "sva": ("test", "attractors_1", "attractors_2"),
    "birdsong": ("test", "noisy", "far_field"),  # a task the suite has never heard of
}
NUM_CLASSES = {"mnist": 10, "sva": 2, "birdsong": 5}


def write_run(
    path: str | os.PathLike,
    *,
    run_id: str,
    task: str,
    model: str,
    role: str,
    distill: str,
    seed: int,
    num_classes: int,
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    features: Mapping[int | str, np.ndarray] | None = None,
    probe_ids: np.ndarray | None = None,
    final_step: int = 1000,
    teacher_run: str | None = None,
    teacher_model: str | None = None,
    objective: str | None = None,
    alpha: float | None = None,
    temperature: float | None = None,
    objective_options: Mapping[str, object] | None = None,
    state_dicts: Mapping[int | str, Mapping] | None = None,
    extra_metrics: Mapping[str, Mapping[str, float]] | None = None,
    complete: bool = True,
    experiment: str = "synthetic",
) -> Path:
    """Write one run dir through :class:`RunDir`.

    ``outputs[split]`` holds ``logits``, ``labels``, ``ids`` and any ``meta_<key>`` arrays;
    metrics.json is computed from them (plus ``extra_metrics[split]``). ``features`` maps a
    training step (int) or ``"final"`` to an (n_probe, d) array for ``probe_ids``.
    ``state_dicts`` maps a step or ``"final"`` to a state dict. The run is marked complete
    (manifest, then COMPLETE) only if ``complete``.
    """
    run = RunDir(path)
    splits = {}
    for split, arrays in outputs.items():
        meta = {k[len(schema.META_PREFIX):]: np.asarray(v) for k, v in arrays.items() if k.startswith(schema.META_PREFIX)}
        logits = np.asarray(arrays["logits"], dtype=np.float32)
        labels = np.asarray(arrays["labels"], dtype=np.int64)
        run.write_outputs(split, logits, labels, arrays["ids"], meta)
        splits[split] = {**split_metrics(torch.from_numpy(logits), torch.from_numpy(labels), meta),
                         **((extra_metrics or {}).get(split, {}))}
    n_probe = 0
    for step, x in (features or {}).items():
        ids = np.asarray(probe_ids, dtype=np.int64)
        n_probe = len(ids)
        run.write_features(step, np.asarray(x, dtype=np.float32), ids, final_step if step == "final" else int(step))
    for step, sd in (state_dicts or {}).items():
        run.write_weights(step, dict(sd))
    config = {"task": {"name": task}, "model": {"name": model}, "seed": seed, "trainer": {"max_epochs": 1},
              "distill": {"mode": distill, "objective": objective, "alpha": alpha,
                          "temperature": temperature, "teacher_run": teacher_run}}
    run.write_config(yaml.safe_dump(config, sort_keys=False))
    run.write_meta({
        "format": schema.FORMAT, "format_version": schema.FORMAT_VERSION, "run_id": run_id, "name": run_id,
        "task": task, "model": model, "role": role, "distill": distill, "objective": objective,
        "teacher_run": teacher_run, "teacher_model": teacher_model, "seed": seed, "alpha": alpha,
        "temperature": temperature, "config_hash": f"synthetic-{model}-{distill}",
        **({"objective_options": dict(objective_options)} if objective_options is not None else {}),
        "experiment": experiment, "num_classes": num_classes,
        "probe": {"split": "test", "n": n_probe}, "versions": {"numpy": np.__version__},
        "git_commit": None,
    })
    run.write_metrics({"splits": splits, "train": {"steps": final_step, "epochs": 1, "wall_time_s": 0.0}})
    if complete:
        run.mark_complete()
    return run.path


@dataclass
class Sweep:
    """Paths of a synthetic sweep, by kind and seed."""

    root: Path
    teachers: dict[int, Path] = field(default_factory=dict)
    independent: dict[int, Path] = field(default_factory=dict)
    students: dict[tuple[str, int], Path] = field(default_factory=dict)  # (label, seed) -> path

    @property
    def all(self) -> list[Path]:
        return [*self.teachers.values(), *self.independent.values(), *self.students.values()]


def make_sweep(
    root: str | os.PathLike,
    *,
    task: str = "mnist",
    teacher_model: str = "cnn",
    student_model: str = "mlp",
    seeds: Sequence[int] = (0, 1, 2),
    closeness: Mapping[str, float] | float = 0.7,
    n: int = 240,
    n_probe: int = 60,
    teacher_dim: int = 24,
    student_dim: int = 16,
    steps: Sequence[int] = (0, 500, 1000),
    with_teacher: bool = True,
    with_checkpoints: bool = False,
    data_seed: int = 1234,
) -> Sweep:
    """Teacher + independent student + distilled students for each seed, under ``root``.

    ``closeness`` maps a distillation mode (``cross``, ``online``, ...; ``cross:hard`` for another
    objective than kd, which reads no temperature) to how far its
    students are pulled to the teacher (0..1); a float means ``{"cross": value}``. The
    teacher is better than the independent student on the out-of-distribution splits, so
    transfer of its advantage is measurable. ``steps`` are the training steps with probe
    features (the last one is the final model); ``()`` writes final features only.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not isinstance(closeness, Mapping):
        closeness = {"cross": float(closeness)}
    C = NUM_CLASSES[task]
    splits = SPLITS[task]
    data = np.random.default_rng(data_seed)
    labels = {s: data.integers(0, C, n) for s in splits}
    # MNIST's OOD sets are the test digits transformed (same ids and labels); agreement splits are
    # distinct sentences
    ids = {s: np.arange(n) + (0 if task == "mnist" else 100_000 * i) for i, s in enumerate(splits)}
    if task == "mnist":
        labels = {s: labels["test"] for s in splits}
    meta = {}
    if task == "sva":
        for s in splits:
            k = int(s.split("_")[1]) if s.startswith("attractors_") else None
            meta[s] = {"meta_attractors": np.full(n, k) if k is not None else data.integers(0, 5, n),
                       "meta_distance": data.integers(1, 8, n)}
    else:
        meta = {s: {"meta_severity": np.full(n, 0 if s == "test" else 3)} for s in splits}
    probe_ids = ids["test"][:n_probe]
    # Shared latent structure of the probe examples (what any model must represent) ...
    latent = data.standard_normal((C, 8))[labels["test"][:n_probe]] + 0.5 * data.standard_normal((n_probe, 8))
    teacher_map = data.standard_normal((8, teacher_dim))
    student_map = data.standard_normal((8, student_dim))
    # ... and an architecture-specific part: the teacher's, seen through a fixed projection.
    teacher_style = np.tanh(data.standard_normal((n_probe, 6)) * 2)
    teacher_style_map = data.standard_normal((6, teacher_dim)) * 1.5
    cross_map = data.standard_normal((teacher_dim, student_dim)) / math.sqrt(teacher_dim)
    # Noise level of each architecture per split: the teacher generalises better OOD.
    noise = {"teacher": {s: (1.0 if s == "test" else 1.6) for s in splits},
             "student": {s: (1.2 if s == "test" else 3.0) for s in splits}}

    def logits_for(kind: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {s: 3.0 * np.eye(C)[labels[s]] + noise[kind][s] * rng.standard_normal((n, C)) for s in splits}

    def feature_path(final: np.ndarray, rng: np.random.Generator) -> dict:
        if not steps:
            return {"final": final}
        init = rng.standard_normal(final.shape)
        last = max(steps)
        return {st: (st / last) * final + (1 - st / last) * init if last else final for st in steps} | {"final": final}

    def outputs_of(logits: dict) -> dict:
        return {s: {"logits": logits[s], "labels": labels[s], "ids": ids[s], **meta[s]} for s in splits}

    def tiny_state(rng: np.random.Generator) -> dict:
        import torch

        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return {"0.weight": torch.randn(8, 4, generator=g), "0.bias": torch.randn(8, generator=g),
                "2.weight": torch.randn(3, 8, generator=g), "2.bias": torch.randn(3, generator=g)}

    def states(rng) -> dict | None:
        if not with_checkpoints:
            return None
        sd = {st: tiny_state(rng) for st in steps}
        sd["final"] = sd[max(steps)] if steps else tiny_state(rng)
        return sd

    final_step = max(steps) if steps else 1000
    sweep = Sweep(root)
    for seed in seeds:
        rng = np.random.default_rng([data_seed, seed])
        t_logits = logits_for("teacher", rng)
        t_feat = latent @ teacher_map + teacher_style @ teacher_style_map + 0.3 * rng.standard_normal((n_probe, teacher_dim))
        t_name = f"teacher-{teacher_model}-s{seed}"
        if with_teacher:
            sweep.teachers[seed] = write_run(
                root / t_name, run_id=t_name, task=task, model=teacher_model, role="teacher",
                distill="none", seed=seed, num_classes=C, outputs=outputs_of(t_logits),
                features=feature_path(t_feat, rng), probe_ids=probe_ids, final_step=final_step,
                state_dicts=states(rng))

        def own_student(r):
            return logits_for("student", r), latent @ student_map + 0.8 * r.standard_normal((n_probe, student_dim))

        s_logits, s_feat = own_student(rng)
        name = f"indep-{student_model}-s{seed}"
        sweep.independent[seed] = write_run(
            root / name, run_id=name, task=task, model=student_model, role="student", distill="none",
            seed=seed, num_classes=C, outputs=outputs_of(s_logits), features=feature_path(s_feat, rng),
            probe_ids=probe_ids, final_step=final_step, state_dicts=states(rng))
        for label, c in closeness.items():
            mode, _, objective = label.partition(":")  # "cross:hard": mode cross, objective hard (default kd)
            objective = objective or "kd"
            options = {"temperature": 1.0, "t_squared": True} if objective == "kd" else {}
            own_logits, own_feat = own_student(np.random.default_rng([data_seed, seed, len(label)]))
            k_logits = {s: c * t_logits[s] + (1 - c) * own_logits[s] for s in splits}
            k_feat = c * (t_feat @ cross_map) * 2.0 + (1 - c) * own_feat
            kind = mode if objective == "kd" else f"{mode}-{objective}"
            name = f"{kind}-{student_model}-from-{teacher_model}-s{seed}"
            sweep.students[(label, seed)] = write_run(
                root / name, run_id=name, task=task, model=student_model, role="student",
                distill=mode, seed=seed, num_classes=C, outputs=outputs_of(k_logits),
                features=feature_path(k_feat, rng), probe_ids=probe_ids, final_step=final_step,
                teacher_run=t_name, teacher_model=teacher_model, objective=objective, alpha=1.0,
                temperature=1.0, objective_options=options, state_dicts=states(rng))
    return sweep


#: Architectures of the paper's two scenarios: (teacher with the useful bias, student without).
SCENARIO_MODELS = {"vision": ("cnn", "mlp"), "language": ("lstm", "transformer")}


def make_scenario(
    root: str | os.PathLike,
    scenario: str = "vision",
    *,
    seeds: Sequence[int] = (0, 1, 2),
    closeness: Mapping[str, float] | None = None,
    n: int = 200,
    n_probe: int = 50,
    severities: Sequence[int] = (),
    teacher_arch_students: bool = True,
    seed_offset: int = 100,
    data_seed: int = 4321,
) -> Sweep:
    """A paper-shaped sweep: per student seed ``s``

    * the cross teacher (CNN / LSTM) and the self teacher (MLP / Transformer), role ``teacher``,
      seed ``s + seed_offset``, as biaskd names them;
    * an independent student of the teacher's architecture (``teacher_arch_students``);
    * student-architecture runs with ``distill`` none, self (from the self teacher) and cross
      (from the cross teacher).

    ``closeness[mode]`` (``none``, ``self``, ``cross``; default 0, 0, 0.8) pulls the outputs and
    probe features of that mode's students toward the *cross* teacher of their seed (0 = the
    student's own solution, 1 = a copy), so tests can build students that are closer to, or
    further from, that teacher than the others. The teacher's architecture is the better one on
    the out-of-distribution splits (vision: ``translated``, ``scaled``, or ``NAME_s1..`` for
    ``severities``; language: ``attractors_1..4``, harder with more attractors).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    closeness = {"none": 0.0, "self": 0.0, "cross": 0.8, **(closeness or {})}
    t_model, s_model = SCENARIO_MODELS[scenario]
    if scenario == "vision":
        task, C = "mnist", 10
        families = ("translated", "scaled")
        ood = {f"{f}_s{k}": k for f in families for k in severities} if severities else {f: 3 for f in families}
        difficulty = {"test": 0, **ood}
    else:
        task, C = "sva", 2
        difficulty = {"test": 0, **{f"attractors_{k}": k for k in range(1, 5)}}
    splits = list(difficulty)
    data = np.random.default_rng(data_seed)
    labels = {s: data.integers(0, C, n) for s in splits}
    # MNIST's OOD sets are the test digits transformed (same ids and labels); agreement splits are
    # distinct sentences
    ids = {s: np.arange(n) + (0 if task == "mnist" else 100_000 * i) for i, s in enumerate(splits)}
    if task == "mnist":
        labels = {s: labels["test"] for s in splits}
    if scenario == "vision":
        meta = {s: {"meta_severity": np.full(n, difficulty[s])} for s in splits}
    else:
        meta = {s: {"meta_attractors": np.full(n, difficulty[s]) if s != "test" else data.integers(0, 3, n),
                    "meta_distance": data.integers(1, 8, n)} for s in splits}
    probe_ids = ids["test"][:n_probe]
    latent = data.standard_normal((C, 8))[labels["test"][:n_probe]] + 0.5 * data.standard_normal((n_probe, 8))
    maps = {m: data.standard_normal((8, 16)) for m in (t_model, s_model)}
    style = np.tanh(data.standard_normal((n_probe, 6)) * 2) @ (data.standard_normal((6, 16)) * 1.5)
    # noise grows with difficulty, much faster for the student architecture
    slope = {t_model: 0.15, s_model: 0.6}

    def own(model: str, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        logits = {s: 3.0 * np.eye(C)[labels[s]] + (1.0 + slope[model] * difficulty[s]) * rng.standard_normal((n, C))
                  for s in splits}
        feats = latent @ maps[model] + (style if model == t_model else 0) + 0.6 * rng.standard_normal((n_probe, 16))
        return logits, feats

    def write(name, model, role, distill, seed, logits, feats, teacher=None, teacher_model=None):
        outputs = {s: {"logits": logits[s], "labels": labels[s], "ids": ids[s], **meta[s]} for s in splits}
        return write_run(root / name, run_id=name, task=task, model=model, role=role, distill=distill, seed=seed,
                         num_classes=C, outputs=outputs, features={"final": feats}, probe_ids=probe_ids,
                         teacher_run=teacher, teacher_model=teacher_model,
                         objective="kd" if distill != "none" else None,
                         alpha=1.0 if distill != "none" else None, temperature=1.0 if distill != "none" else None,
                         experiment=f"synthetic_{scenario}")

    sweep = Sweep(root)
    for seed in seeds:
        rng = np.random.default_rng([data_seed, seed])
        t_name, st_name = f"teacher-{t_model}-s{seed + seed_offset}", f"teacher-{s_model}-s{seed + seed_offset}"
        t_logits, t_feat = own(t_model, rng)
        sweep.teachers[seed] = write(t_name, t_model, "teacher", "none", seed + seed_offset, t_logits, t_feat)
        write(st_name, s_model, "teacher", "none", seed + seed_offset, *own(s_model, rng))
        if teacher_arch_students:
            name = f"none-{t_model}-s{seed}"
            sweep.students[(f"none-{t_model}", seed)] = write(name, t_model, "student", "none", seed, *own(t_model, rng))
        for mode in ("none", "self", "cross"):
            c = closeness[mode]
            logits, feats = own(s_model, rng)
            logits = {s: c * t_logits[s] + (1 - c) * logits[s] for s in splits}
            feats = c * t_feat + (1 - c) * feats
            teacher = {"none": None, "self": st_name, "cross": t_name}[mode]
            name = f"{mode}-{s_model}" + (f"-from-{t_model}" if mode == "cross" else "") + f"-s{seed}"
            path = write(name, s_model, "student", mode, seed, logits, feats, teacher,
                         {"none": None, "self": s_model, "cross": t_model}[mode])
            if mode == "none":
                sweep.independent[seed] = path
            else:
                sweep.students[(mode, seed)] = path
    return sweep


def rerecord(root: str | os.PathLike, **fields) -> None:
    """Rewrite every run under ``root`` with ``fields`` in its ``meta.json`` (e.g. another ``task``
    and the ``scenario`` it recorded), its manifest written anew so the runs stay complete."""
    for meta in Path(root).rglob(schema.META):
        run = RunDir(meta.parent)
        info = json.loads(meta.read_text())
        run.reset_outcome()
        run.write_meta({**info, **fields})
        run.mark_complete()
