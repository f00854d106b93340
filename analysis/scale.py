"""How large the reference runs are, read from their run dirs (the README's scale section), and
the commands that made them."""

from __future__ import annotations

import shlex
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from biaskd.errors import ArtifactError

from analysis import figures
from analysis.runs import Run, order_splits
from analysis.scenario import Scenario


def _model_desc(run: Run) -> str:
    try:
        cfg = dict(run.config.get("model") or {})
    except ArtifactError:
        cfg = {}
    desc = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("name", "_target_"))
    size = None
    if (run.path / "model.pt").is_file():
        try:
            sd = run.state_dict()
            size = sum(int(np.prod(v.shape)) for v in sd.values() if hasattr(v, "shape"))
        except ArtifactError:
            size = None
    return (desc or "config has no size keys") + (f"; {size:,} numbers in model.pt" if size is not None else "")


def _source(meta: dict) -> str:
    """Where a run's training and test data came from (file names, not paths), from meta.json."""
    source = (meta.get("data") or {}).get("source") if isinstance(meta.get("data"), dict) else None
    if not isinstance(source, dict):
        return str(source or "")

    def short(v) -> str:
        kind, _, path = str(v).rpartition(":") if str(v).startswith("idx:") else ("", "", str(v))
        return f"{kind + ' ' if kind else ''}{Path(path).name}" if "/" in path else str(v)

    return "; ".join(f"{k}: {short(source[k])}" for k in ("train", "test") if source.get(k))


def _train_size(runs: Sequence[Run]) -> str:
    recorded = set()
    spans = set()
    for r in runs:
        data = r.meta.get("data") or {}
        n = (data.get("sizes") or {}).get("train") if isinstance(data, dict) else None
        n = n or (r.metrics.get("train") or {}).get("n_train")
        if n:
            recorded.add(int(n))
            continue
        train = r.metrics.get("train") or {}
        steps, epochs = train.get("steps"), train.get("epochs")
        try:
            cfg = r.config
        except ArtifactError:
            cfg = {}
        bs = (cfg.get("train") or {}).get("batch_size") or (cfg.get("task") or {}).get("batch_size")
        if steps and epochs and bs and steps % epochs == 0:
            k = steps // epochs
            spans.add((k, int(bs)))
    if recorded:
        return ", ".join(f"{n:,}" for n in sorted(recorded)) + " (recorded in the run dirs)"
    if spans:
        return "; ".join(f"{(k - 1) * b + 1:,}–{k * b:,} ({k} steps per epoch × batch size {b})"
                         for k, b in sorted(spans))
    return "not recorded"


def scale_facts(sc: Scenario) -> pd.DataFrame:
    rows = []
    for task in sc.tasks:
        runs = sc.task_runs(task)

        def add(q, v, src):
            rows.append({"scenario": sc.name, "task": task, "quantity": q, "value": v, "source": src})

        student_seeds = sorted({r.seed for r in runs if r.role != "teacher"})
        add("complete runs", str(len(runs)), "run dirs with COMPLETE")
        add("student seeds", ", ".join(map(str, student_seeds)) or "none", "meta.json `seed`")
        info = pd.DataFrame([{"config": c, "seed": r.seed} for r, c in
                             zip(runs, figures.config_label(pd.DataFrame([{"model": r.model, "role": r.role,
                                 "distill": r.distill, "teacher_model": r.teacher_model} for r in runs])))])
        per = info.groupby("config")["seed"].nunique()
        add("seeds per configuration", f"{per.min()}–{per.max()}" if per.min() != per.max() else str(per.min()),
            "meta.json")
        add("training examples", _train_size(runs), "metrics.json `train.steps`/`train.epochs`, config batch size")
        try:
            grammar = {(r.config.get("task") or {}).get("grammar", {}).get("n_train") for r in runs} - {None}
        except (ArtifactError, AttributeError):
            grammar = set()
        if grammar:
            add("grammar sentences generated for training", ", ".join(map(str, sorted(grammar))),
                "config `task.grammar.n_train`")
        epochs = defaultdict(set)
        for r in runs:
            e = (r.metrics.get("train") or {}).get("epochs")
            if e is not None:
                epochs[r.model].add(int(e))
        add("epochs", "; ".join(f"{m}: {', '.join(map(str, sorted(e)))}" for m, e in sorted(epochs.items()))
            or "not recorded", "metrics.json `train.epochs`")
        for model in sorted({r.model for r in runs}):
            add(f"model `{model}`", _model_desc(next(r for r in runs if r.model == model)), "config.yaml `model`, model.pt")
        kd = sorted({(r.distill, r.objective or "kd", r.alpha, r.temperature,
                      (r.meta.get("objective_options") or {}).get("t_squared")) for r in runs if r.mode.distilled},
                    key=str)
        add("distillation", "; ".join(f"{d}: {o}, α={a}, T={t}" + {True: ", with T²", False: ", without T²"}.get(t2, "")
                                      for d, o, a, t, t2 in kd) or "none", "meta.json (`objective_options`)")
        sources = sorted({_source(r.meta) for r in runs} - {""})
        if sources:
            add("data", " | ".join(sources), "meta.json `data.source`")
        sizes = defaultdict(set)
        for r in runs:
            for split in r.splits:
                n = r.metrics["splits"][split].get("n")
                if n is not None:
                    sizes[int(n)].add(split)
        add("eval examples per split", "; ".join(f"{n:,}: " + ", ".join(order_splits(s)) for n, s in sorted(sizes.items()))
            or "not recorded", "metrics.json `n`")
        wall = [float((r.metrics.get("train") or {}).get("wall_time_s") or 0) for r in runs]
        add("training wall time", f"{sum(wall) / 60:.1f} min over {len(runs)} runs (sum of per-run times)",
            "metrics.json `train.wall_time_s`")
    return pd.DataFrame(rows, columns=["scenario", "task", "quantity", "value", "source"])


def read_commands(path: Path) -> list[str]:
    """Lines of a commands file: commands, ``# comments`` and ``COMMAND  # annotation`` (e.g. a
    measured wall time); blank lines kept as separators."""
    return [line.rstrip() for line in path.read_text().splitlines()]


def hydra_commands(paths: Sequence[str | Path]) -> list[str]:
    """The ``biaskd`` command lines Hydra recorded under the runs folders (``_hydra/``)."""
    import yaml

    out = []
    roots = []
    for p in map(Path, paths):
        for cand in (p / "_hydra", p.parent / "_hydra"):
            if cand.is_dir() and cand.resolve() not in roots:
                roots.append(cand.resolve())
    for root in roots:
        for d in sorted(x for x in root.iterdir() if x.is_dir()):
            try:
                if (d / "multirun.yaml").is_file():
                    cfg = yaml.safe_load((d / "multirun.yaml").read_text())
                    ov = cfg["hydra"]["overrides"]["task"]
                    out.append(f"biaskd -m {shlex.join(ov)}  # {d.name}")
                elif (d / ".hydra" / "overrides.yaml").is_file():
                    ov = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
                    out.append(f"biaskd {shlex.join(ov)}  # {d.name}")
            except Exception:  # a half-written or foreign folder: not a recorded command
                continue
    return out
