"""A scenario's runs for the reference results: which eval splits are clean, OOD or attractor
splits (:class:`Layout`), the runs by role and seed (:class:`Scenario`), and the per-configuration
tables (mean ± 95% CI over seeds, accuracy against severity, transfer ratios)."""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from biaskd.errors import ArtifactError
from biaskd.modes import MODES, Mode

from analysis import figures, tables
from analysis.bias import bias_measure
from analysis.runs import Run, find_runs, is_independent, mode_flag, order_splits, runs_frame, with_teachers

#: Derived pseudo-splits added to the metrics frame (accuracy only).
OOD_MEAN = "ood_mean"
A_MEAN = "attractors_mean"
ALL_SPLITS = "all_splits_mean"
NOT_EVAL = {"train", "valid"}
_ATTRACTORS_RE = re.compile(r"^attractors_(\d+)$")
#: how a task's eval splits are grouped (its runs' bias measure says which: BiasMeasure.layout)
FAMILIES, ATTRACTORS = "families", "attractors"


def arch(model: str) -> str:
    """Architecture family of a model config name (``transformer_seq`` -> ``transformer``)."""
    return model[: -len("_seq")] if model.endswith("_seq") else model


def task_key(run: Run) -> str:
    """The task, with ``_lm`` for language-model runs (they share ``task`` with classification runs)."""
    lm = run.meta.get("setup") == "lm" and not run.task.endswith("_lm")
    return f"{run.task}_lm" if lm else run.task


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# --- split layout of a task --------------------------------------------------------------------
@dataclass
class Layout:
    """Which eval splits of a task are clean, out-of-distribution, or attractor splits: ``kind``
    :data:`FAMILIES` (every split other than ``test`` an OOD family, or a severity of one) or
    :data:`ATTRACTORS` (``attractors_k``, and further splits listed apart)."""

    kind: str
    splits: list[str]
    families: dict[str, list[str]] = field(default_factory=dict)  # families: OOD family -> its splits
    swept: set[str] = field(default_factory=set)  # families with a severity sweep
    attractors: dict[int, str] = field(default_factory=dict)  # attractors: k -> split
    others: list[str] = field(default_factory=list)  # attractors: further non-test splits

    @classmethod
    def of(cls, kind: str, splits: Iterable[str]) -> "Layout":
        splits = [s for s in order_splits(splits) if s not in NOT_EVAL and s not in (OOD_MEAN, A_MEAN)]
        lay = cls(kind, splits)
        if kind != ATTRACTORS:
            sweeps: dict[str, list[tuple[int, str]]] = defaultdict(list)
            plain = []
            for s in splits:
                fam, sev = tables.split_severity(s)
                if s == "test":
                    continue
                if sev is None:
                    plain.append(s)
                else:
                    sweeps[fam].append((sev, s))
            for fam, items in sweeps.items():
                lay.families[fam] = [s for _, s in sorted(items)]
                lay.swept.add(fam)
            for s in plain:
                lay.families.setdefault(s, [s])  # a sweep of the same family wins: no double count
            lay.families = dict(sorted(lay.families.items()))
        else:
            for s in splits:
                m = _ATTRACTORS_RE.match(s)
                if m:
                    lay.attractors[int(m.group(1))] = s
                elif s != "test":
                    lay.others.append(s)
            lay.attractors = dict(sorted(lay.attractors.items()))
        return lay

    @staticmethod
    def family_split(fam: str) -> str:
        return f"{fam}_mean"

    def family_value_split(self, fam: str) -> str:
        return self.family_split(fam) if fam in self.swept else fam

    @property
    def summary(self) -> str:
        """The derived split that sums the bias up: mean OOD accuracy, or A-accuracy."""
        return A_MEAN if self.kind == ATTRACTORS else OOD_MEAN

    def components(self) -> list[tuple[str, str]]:
        """(name, split) of what :attr:`summary` averages: the OOD families (a swept one by its
        mean), or ``attractors_k``."""
        if self.kind == ATTRACTORS:
            return [(f"attractors_{k}", s) for k, s in self.attractors.items()]
        return [(f, self.family_value_split(f)) for f in self.families]

    def lacks(self) -> str | None:
        """What the task lacks to measure its bias (None: nothing)."""
        if self.kind == ATTRACTORS:
            return None if self.attractors else "no `attractors_k` splits"
        return None if self.families else "no out-of-distribution splits"

    def derived(self, acc: dict[str, float]) -> dict[str, float]:
        """Derived accuracies of one run from its per-split accuracies; a derived value whose
        components are not all present is left out rather than averaged over fewer splits."""
        out = {}

        def mean_of(parts):
            vals = [acc.get(p) for p in parts]
            return float(np.mean(vals)) if parts and all(not _nan(v) for v in vals) else None

        if self.kind != ATTRACTORS:
            fam_vals = {}
            for fam, parts in self.families.items():
                fam_vals[fam] = mean_of(parts)
                if fam in self.swept and fam_vals[fam] is not None:
                    out[self.family_split(fam)] = fam_vals[fam]
            if fam_vals and all(v is not None for v in fam_vals.values()):
                out[OOD_MEAN] = float(np.mean(list(fam_vals.values())))
        elif self.attractors:
            v = mean_of(list(self.attractors.values()))
            if v is not None:
                out[A_MEAN] = v
        return out

    def describe(self) -> str:
        if self.lacks():
            return self.lacks()
        if self.kind != ATTRACTORS:
            parts = [f"`{f}` (mean of {', '.join(f'`{s}`' for s in p)})" if f in self.swept else f"`{f}`"
                     for f, p in self.families.items()]
            return ("OOD mean = mean over the OOD families " + ", ".join(parts)
                    + "; a family with a severity sweep counts as the mean over its severities")
        return "A-accuracy = mean accuracy over " + ", ".join(f"`{s}`" for s in self.attractors.values())


# --- a scenario's runs -------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    paths: list[str]
    runs: list[Run] = field(default_factory=list)
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    layouts: dict[str, Layout] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    values: dict[tuple[str, str, str], float] = field(default_factory=dict)
    teacher_of: dict[str, Run] = field(default_factory=dict)  # student run_id -> teacher Run
    taught: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))  # teacher id -> student seeds

    @property
    def tasks(self) -> list[str]:
        return sorted(self.layouts)

    def task_runs(self, task: str) -> list[Run]:
        return [r for r in self.runs if task_key(r) == task]

    # members are (seed, run) pairs: a teacher appears once per seed of the students it taught
    def independent(self, task: str, arch_name: str) -> list[tuple[int, Run]]:
        return [(r.seed, r) for r in self.task_runs(task)
                if arch(r.model) == arch_name and not r.mode.distilled and r.role != "teacher"]

    def teachers(self, task: str, arch_name: str) -> list[tuple[int, Run]]:
        out = []
        for r in self.task_runs(task):
            if arch(r.model) == arch_name and r.run_id in self.taught:
                out += [(s, r) for s in sorted(self.taught[r.run_id])]
        return out

    def distilled(self, task: str, model: str, which: Callable[[Mode], bool],
                  teacher_arch: str | None = None) -> dict[tuple, list[tuple[int, Run]]]:
        """KD students of ``model`` in the modes ``which`` accepts (e.g. ``lambda m: m.cross_distilled``),
        by (mode, teacher model, alpha, temperature) configuration."""
        groups: dict[tuple, list[tuple[int, Run]]] = defaultdict(list)
        for r in self.task_runs(task):
            if (r.model == model and which(r.mode) and (r.objective or "kd") == "kd"
                    and (teacher_arch is None or arch(r.teacher_model or "") == teacher_arch)):
                groups[(r.distill, r.teacher_model, r.alpha, r.temperature)].append((r.seed, r))
        return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))

    def per_seed(self, members: Sequence[tuple[int, Run]], split: str, metric: str = "accuracy") -> pd.Series:
        by_seed: dict[int, list[float]] = defaultdict(list)
        for seed, r in members:
            v = self.values.get((r.run_id, split, metric))
            if not _nan(v):
                by_seed[int(seed)].append(v)
        return pd.Series({s: float(np.mean(v)) for s, v in sorted(by_seed.items())}, dtype=float)


def layout_kind(sc: Scenario, task: str) -> str:
    """How ``task``'s splits are grouped: as its runs' recorded bias measure says
    (:mod:`biaskd.scenario`, :attr:`analysis.bias.BiasMeasure.layout`); one that cannot be
    read is noted and the task grouped as OOD families."""
    measures = sorted({r.scenario.measure for r in sc.task_runs(task)})
    kinds = set()
    for measure in measures:
        try:
            kinds.add(bias_measure(measure).layout)
        except ArtifactError as exc:
            sc.notes.append(f"`{task}`: {exc}; its splits are read as out-of-distribution families")
            kinds.add(FAMILIES)
    if len(kinds) > 1:
        sc.notes.append(f"`{task}`: runs of several bias measures ({', '.join(measures)}); "
                        "its splits are read as out-of-distribution families")
    return kinds.pop() if len(kinds) == 1 else FAMILIES


def load_scenario(name: str, paths: Sequence[str | Path], keep: Callable[[Run], bool] | None = None) -> Scenario:
    """Runs, tidy metrics (task = :func:`task_key`, plus derived splits), split layouts, teachers
    (``keep``: only the runs it accepts, and their teachers)."""
    sc = Scenario(name, [str(p) for p in paths])
    existing = []
    for p in paths:
        if Path(p).exists():
            existing.append(p)
        else:
            sc.notes.append(f"path `{p}` does not exist")
    if not existing:
        return sc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sc.runs = with_teachers([r for r in find_runs(*existing) if keep is None or keep(r)])
        frame = runs_frame(sc.runs)
    sc.notes += sorted({str(w.message) for w in caught})
    if not sc.runs:
        return sc
    keys = {r.run_id: task_key(r) for r in sc.runs}
    frame["task"] = frame["run"].map(keys)
    for r in sc.runs:
        if r.teacher_path is None or not r.mode.distilled:
            continue
        try:
            t = r.teacher
        except ArtifactError as exc:
            sc.notes.append(str(exc))
            continue
        sc.teacher_of[r.run_id] = t
        if r.mode.cross_distilled:
            sc.taught[t.run_id].add(r.seed)
    for task, ft in frame.groupby("task"):
        sc.layouts[task] = Layout.of(layout_kind(sc, task), ft["split"].unique())
    rows = []
    acc = frame[frame["metric"] == "accuracy"]
    for run_id, fr in acc.groupby("run"):
        lay = sc.layouts[keys[run_id]]
        base = fr.iloc[0].to_dict()
        for split, v in lay.derived(dict(zip(fr["split"], fr["value"]))).items():
            rows.append({**base, "split": split, "value": v})
    if rows:
        frame = pd.concat([frame, pd.DataFrame(rows, columns=frame.columns)], ignore_index=True)
    sc.frame = frame
    sc.values = {(r, s, m): float(v) for r, s, m, v in zip(frame["run"], frame["split"], frame["metric"], frame["value"])}
    return sc


# --- tables --------------------------------------------------------------------------------------
def _config_labels(frame: pd.DataFrame) -> pd.Series:
    """``mlp / cross<-cnn``; distinct KD settings under one label get ``(α=…, T=…)`` appended."""
    base = figures.config_label(frame)
    extra = pd.Series("", index=frame.index)
    kd = ~is_independent(frame)
    settings = (frame["alpha"].map(str) + "/" + frame["temperature"].map(str)) if "alpha" in frame else None
    if settings is not None:
        for label in base[kd].unique():
            rows = kd & (base == label)
            if settings[rows].nunique() > 1:
                extra[rows] += (" (α=" + frame.loc[rows, "alpha"].map(str) + ", T="
                                + frame.loc[rows, "temperature"].map(str) + ")")
    return base + extra


def table_columns(sc: Scenario, task: str) -> list[tuple[str, str, str]]:
    """(header, split, metric) of the scenario table of ``task``."""
    lay = sc.layouts[task]
    have = {(s, m) for s, m in zip(sc.frame.loc[sc.frame["task"] == task, "split"],
                                   sc.frame.loc[sc.frame["task"] == task, "metric"])}
    cols = []
    if lay.kind != ATTRACTORS:
        cols.append(("test", "test", "accuracy"))
        plain = [s for s in lay.splits if s != "test" and tables.split_severity(s)[1] is None]
        for fam in lay.families:
            if fam in lay.swept:
                sevs = [tables.split_severity(s)[1] for s in lay.families[fam]]
                cols.append((f"{fam} (mean s{min(sevs)}–s{max(sevs)})", lay.family_split(fam), "accuracy"))
        cols += [(s, s, "accuracy") for s in plain]
        cols.append(("OOD mean", OOD_MEAN, "accuracy"))
        cols.append(("ECE (test)", "test", "ece"))
    else:
        cols.append(("μ-accuracy (test)", "test", "accuracy"))
        cols.append(("A-accuracy", A_MEAN, "accuracy"))
        cols += [(f"k={k}", s, "accuracy") for k, s in lay.attractors.items()]
        cols += [(s, s, "accuracy") for s in lay.others]
        cols.append(("ECE (test)", "test", "ece"))
        cols.append(("perplexity (test)", "test", "perplexity"))
    return [c for c in cols if (c[1], c[2]) in have]


def scenario_table(sc: Scenario, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Markdown-ready wide table, long CSV table) of mean ± 95% CI over seeds."""
    cols = table_columns(sc, task)
    f = sc.frame[sc.frame["task"] == task]
    want = pd.MultiIndex.from_tuples([(s, m) for _, s, m in cols])
    f = f[pd.MultiIndex.from_arrays([f["split"], f["metric"]]).isin(want)]
    s = tables.summarize(f)
    s["config"] = _config_labels(s)
    header = {(sp, m): h for h, sp, m in cols}
    s["column"] = [header[(sp, m)] for sp, m in zip(s["split"], s["metric"])]
    wide = s.pivot_table(index="config", columns="column", values="text", aggfunc="first")
    wide = wide.reindex(columns=[h for h, _, _ in cols]).reset_index()
    n = s.groupby("config")["n"].max().rename("seeds (n)")
    wide = wide.merge(n, left_on="config", right_index=True)
    wide = wide[["config", "seeds (n)"] + [h for h, _, _ in cols]]
    long = s[["task", "config", "model", "role", "distill", "teacher_model", "objective", "alpha", "temperature",
              "column", "split", "metric", "n", "mean", "half_width", "ci_low", "ci_high", "seeds", "note"]]
    return wide, long.sort_values(["config", "column"]).reset_index(drop=True)


def severity_tables(sc: Scenario, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    f = sc.frame[(sc.frame["task"] == task) & (sc.frame["metric"] == "accuracy")]
    s = tables.summarize(f)
    s["config"] = _config_labels(s)
    sev = tables.severity_table(s)
    if sev.empty:
        return sev, sev
    wide = sev.pivot_table(index=["family", "config"], columns="severity", values="text", aggfunc="first")
    wide.columns = [f"s{c}" if c else "s0 (test)" for c in wide.columns]
    long = sev[["task", "family", "severity", "split", "config", "n", "mean", "half_width", "seeds"]]
    return wide.reset_index(), long


def transfer_rows(sc: Scenario, task: str) -> pd.DataFrame:
    """Transfer ratio of every cross-architecture KD configuration, on the table's columns."""
    cols = table_columns(sc, task)
    f = sc.frame[sc.frame["task"] == task]
    t = tables.transfer_table(f, metrics=sorted({m for _, _, m in cols}))
    if t.empty:
        return t
    t = t[~mode_flag(t, "teacher_is_student") & (t["model"] != t["teacher_model"])]
    order = {(sp, m): i for i, (_, sp, m) in enumerate(cols)}
    header = {(sp, m): h for h, sp, m in cols}
    t = t[[(sp, m) in order for sp, m in zip(t["split"], t["metric"])]].copy()
    t["column"] = [header[(sp, m)] for sp, m in zip(t["split"], t["metric"])]
    t["_o"] = [order[(sp, m)] for sp, m in zip(t["split"], t["metric"])]
    t["student"] = _config_labels(t.assign(role="student"))
    return t.sort_values(["student", "_o"]).drop(columns="_o").reset_index(drop=True)


def missing_configs(sc: Scenario, task: str, expected: Iterable[tuple[str, str, str | None]] = ()) -> list[str]:
    """The ``expected`` configurations (architecture, distill mode, teacher architecture) that
    ``task`` has no runs of."""
    runs = sc.task_runs(task)
    have = {(arch(r.model), r.distill, arch(r.teacher_model) if r.teacher_model else None) for r in runs}
    have |= {(arch(r.model), "none", None) for r in runs if r.role == "teacher"}
    shows_teacher = {name for name, mode in MODES.items() if mode.cross_distilled}
    return [f"{m} ({d}" + (f"<-{t})" if d in shows_teacher else ")") for m, d, t in expected
            if (m, d, t) not in have]
