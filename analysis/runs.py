"""Read biaskd run dirs lazily, so a large sweep costs only its small JSON files.

The format is :mod:`biaskd.record.schema`'s; files are loaded (and checked against the run's manifest)
by :class:`biaskd.record.artifacts.RunDir`. :func:`load_run` validates the small files (and that the
recorded distillation mode is one of :data:`biaskd.modes.MODES`) and fails with :class:`ArtifactError`
naming the run and file; per-example arrays are read only when asked for
(:meth:`Run.outputs`, :meth:`Run.features`) and not cached, so iterating over a 50-run sweep
never holds all their outputs at once. :func:`find_runs` leaves out what it cannot use, with one
:class:`RunProblem` warning each; :func:`readable_runs` does the same for unreadable arrays.
"""

from __future__ import annotations

import math
import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from biaskd.errors import ArtifactError, ArtifactWarning
from biaskd.modes import MODES, Mode
from biaskd.record import artifacts, schema
from biaskd.record.artifacts import RunDir
from biaskd.record.schema import Features, SplitOutputs
from biaskd.scenario import Scenario, of_record as scenario_of_record

#: Columns of :func:`runs_frame` that describe a run (one value per run).
RUN_COLUMNS = [
    "run",
    "run_dir",
    "task",
    "model",
    "role",
    "distill",
    "objective",
    "teacher_run",
    "teacher_model",
    "seed",
    "alpha",
    "temperature",
    "experiment",
    "config_hash",
    "transfer",
    "transfer_n",
]
FRAME_COLUMNS = RUN_COLUMNS + ["split", "metric", "value"]


class IncompleteRunError(ArtifactError):
    """The run dir has no COMPLETE marker (still running, killed, or failed)."""


class RunProblem(ArtifactWarning):
    """A warning about one run dir (``path``): left out of an analysis, or read only in part."""


def _read_json(path: Path, run: str) -> Any:
    if not path.is_file():
        raise ArtifactError(f"run {run}: missing {path.name} ({path})")
    try:
        return artifacts.read_json(path)
    except ArtifactError as exc:
        raise ArtifactError(f"run {run}: {exc}") from None


def _load_npz(path: Path, run: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ArtifactError(f"run {run}: missing {path.relative_to(path.parents[1])} ({path})")
    try:
        return artifacts.load_npz(path)
    except ArtifactError as exc:
        raise ArtifactError(f"run {run}: cannot read {exc}") from None


class Run:
    """One run dir. Small JSON files are read at construction; arrays on demand."""

    def __init__(self, path: str | os.PathLike, meta: dict, metrics: dict):
        self.path = Path(path)
        self.dir = RunDir(self.path)
        self.meta = meta
        self.metrics = metrics

    # --- identity -------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return str(self.meta["run_id"])

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.run_id)

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def scenario(self) -> Scenario:
        """The scenario the run recorded: name, bias measure, headline (:mod:`biaskd.scenario`)."""
        return scenario_of_record(self.meta)

    @property
    def model(self) -> str:
        return str(self.meta["model"])

    @property
    def role(self) -> str:
        return str(self.meta["role"])

    @property
    def distill(self) -> str:
        return str(self.meta["distill"])

    @property
    def mode(self) -> Mode:
        """The distillation mode of :attr:`distill` (:data:`biaskd.modes.MODES`): ask it, not the
        name, whether the run had a teacher (``mode.distilled``) and which (``mode.cross_distilled``, ...)."""
        return recorded_mode(self.distill, str(self.path))

    @property
    def objective(self) -> str | None:
        return self.meta.get("objective")

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def alpha(self) -> float | None:
        return self.meta.get("alpha")

    @property
    def temperature(self) -> float | None:
        return self.meta.get("temperature")

    @property
    def teacher_model(self) -> str | None:
        return self.meta.get("teacher_model")

    @property
    def transfer_n(self) -> int:
        """Number of transfer inputs beyond the training set (0: the paper's setting)."""
        return int((self.meta.get("transfer") or {}).get("n") or 0)

    @property
    def transfer(self) -> str:
        """``""`` for the training set alone, else e.g. ``heldout 10000`` / ``augment 30000 only``."""
        t = self.meta.get("transfer") or {}
        if not self.transfer_n:
            return ""
        size = t.get("size")
        return f"{t.get('source')} {'all' if size is None else size}" + ("" if t.get("mix_with_train", True) else " only")

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def label(self) -> str:
        """Its configuration's label and seed, e.g. ``mlp distilled from cnn · s0`` (:mod:`analysis.style`)."""
        from analysis.style import Style

        return Style().run_label(self)

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, {self.label!r}, path={str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    # --- teacher ----------------------------------------------------------------------------
    @property
    def teacher_path(self) -> Path | None:
        """The teacher's run dir (absolute, or relative to this run dir's parent), or None."""
        ref = self.meta.get("teacher_run")
        if not ref:
            return None
        p = Path(ref)
        # normalised, so that students in different sweep folders name their teacher alike
        return p if p.is_absolute() else Path(os.path.normpath(self.path.parent / p))

    @cached_property
    def teacher(self) -> "Run | None":
        """The teacher's :class:`Run`; ``None`` if this run has no teacher.

        Raises :class:`ArtifactError` if the run names a teacher that cannot be loaded.
        """
        tp = self.teacher_path
        if tp is None:
            return None
        if not tp.is_dir():
            raise ArtifactError(
                f"run {self.run_id}: teacher run dir {self.meta.get('teacher_run')!r} "
                f"not found (resolved to {tp})"
            )
        return load_run(tp)

    # --- config / metrics --------------------------------------------------------------------
    @cached_property
    def config(self) -> dict:
        import yaml

        p = self.path / schema.CONFIG
        if not p.is_file():
            raise ArtifactError(f"run {self.run_id}: missing config.yaml ({p})")
        try:
            artifacts.check_file(p)
        except ArtifactError as exc:
            raise ArtifactError(f"run {self.run_id}: {exc}") from None
        return yaml.safe_load(p.read_text()) or {}

    @property
    def splits(self) -> list[str]:
        """Eval splits with scalar metrics in metrics.json (``test`` first)."""
        return order_splits(self.metrics.get("splits", {}).keys())

    def output_splits(self) -> list[str]:
        """Eval splits that have per-example outputs on disk (``test`` first)."""
        d = self.path / schema.OUTPUTS
        if not d.is_dir():
            return []
        return order_splits(p.stem for p in d.glob("*.npz"))

    def metric(self, split: str, name: str) -> float:
        try:
            return float(self.metrics["splits"][split][name])
        except KeyError:
            raise ArtifactError(
                f"run {self.run_id}: metrics.json has no metric {name!r} for split {split!r}"
            ) from None

    # --- arrays -------------------------------------------------------------------------------
    def outputs(self, split: str) -> SplitOutputs:
        """Load ``outputs/<split>.npz`` (not cached) and check its shapes."""
        path = self.path / schema.outputs_file(split)
        return schema.split_outputs(_load_npz(path, self.run_id), self.run_id, split, self.num_classes, path)

    def feature_steps(self) -> list[int]:
        """Training steps with saved probe features (``features/step_*.npz``), ascending."""
        return list(self.dir.steps(schema.FEATURES, "npz"))

    def has_features(self, step: int | str = "final") -> bool:
        if step == "final":
            return (self.path / schema.features_file()).is_file()
        return int(step) in self.dir.steps(schema.FEATURES, "npz")

    def features(self, step: int | str = "final") -> Features:
        """Probe features at ``step`` (an int training step, or ``"final"``)."""
        if step != "final" and int(step) not in self.dir.steps(schema.FEATURES, "npz"):
            raise ArtifactError(
                f"run {self.run_id}: no features at step {step} "
                f"(have {self.feature_steps()}) in {self.path / schema.FEATURES}"
            )
        path = self.path / schema.features_file(step)
        default = int(step) if step != "final" else int(self.metrics.get("train", {}).get("steps", -1))
        return schema.features_record(_load_npz(path, self.run_id), self.run_id, default,
                                      (self.meta.get("probe") or {}).get("n"), path)

    def checkpoint_steps(self) -> list[int]:
        return list(self.dir.steps(schema.CHECKPOINTS, "pt"))

    def state_dict(self, step: int | None = None) -> dict:
        """Final (``model.pt``) or step-``step`` state dict, loaded with ``weights_only=True``."""
        if step is not None and int(step) not in self.dir.steps(schema.CHECKPOINTS, "pt"):
            raise ArtifactError(f"run {self.run_id}: no checkpoint at step {step} (have {self.checkpoint_steps()})")
        path = self.path / schema.weights_file("final" if step is None else step)
        if not path.is_file():
            raise ArtifactError(f"run {self.run_id}: missing {path.name} ({path})")
        try:
            return artifacts.load_state_dict(path)
        except ArtifactError as exc:
            raise ArtifactError(f"run {self.run_id}: {exc}") from None


def recorded_mode(name: str, where: str) -> Mode:
    """The mode a run recorded as ``distill``; an ArtifactError naming the run (``where``) and the
    mode if :data:`biaskd.modes.MODES` has none of that name."""
    if name not in MODES:
        raise ArtifactError(f"run {where}: meta.json records distill mode {name!r}, which is not one of "
                            f"{', '.join(MODES)} (biaskd.modes.MODES)")
    return MODES[name]


def mode_flag(frame: pd.DataFrame, prop: str) -> pd.Series:
    """``prop`` (a :class:`~biaskd.modes.Mode` property: ``distilled``, ``teacher_is_student``,
    ``cross_distilled``, ...) of each row's mode, read off its ``distill`` column, as a boolean
    Series on ``frame``'s index; an ArtifactError naming any mode :data:`biaskd.modes.MODES` lacks."""
    distill = frame["distill"]
    known = distill.isin(list(MODES))
    if not known.all():
        raise ArtifactError(f"distill mode(s) {', '.join(sorted({str(d) for d in distill[~known]}))} in the "
                            f"table are not among {', '.join(MODES)} (biaskd.modes.MODES)")
    return distill.isin([name for name, m in MODES.items() if getattr(m, prop)])


def is_independent(frame: pd.DataFrame) -> pd.Series:
    """Rows of runs trained without a teacher signal (the independent control; teachers too)."""
    return ~mode_flag(frame, "distilled")


def order_splits(splits: Iterable[str]) -> list[str]:
    """``test`` first, then the rest alphabetically (``attractors_1`` < ``attractors_2``)."""
    s = sorted(set(splits))
    return (["test"] if "test" in s else []) + [x for x in s if x != "test"]


def load_run(path: str | os.PathLike) -> Run:
    """Load one run dir; raises :class:`ArtifactError` if it is failed, incomplete or corrupt."""
    path = Path(path)
    label = str(path)
    if not path.is_dir():
        raise ArtifactError(f"run dir {label} does not exist")
    if (path / schema.FAILED).exists():
        reason = ""
        try:
            reason = artifacts.read_json(path / schema.FAILED).get("reason", "")
        except Exception:
            pass
        raise IncompleteRunError(f"run {label} FAILED: {reason or 'no reason given'}")
    if not (path / schema.COMPLETE).exists():
        raise IncompleteRunError(f"run {label} is incomplete (no COMPLETE marker)")
    meta = schema.check_meta(_read_json(path / schema.META, label), label)
    recorded_mode(str(meta["distill"]), label)
    metrics = schema.check_metrics(_read_json(path / schema.METRICS, meta["run_id"]), f"{meta['run_id']} ({path})")
    return Run(path, meta, metrics)


def find_runs(*paths: str | os.PathLike, include_failed: bool = False) -> list[Run]:
    """All run dirs (dirs with meta.json, or any other file that makes one: :func:`biaskd.record.schema.is_run_dir`)
    at or below ``paths``, sorted by path.
    A sweep folder's ``runs.txt`` names its runs (:func:`sweep_run_dirs`).

    Incomplete, failed and corrupt runs (missing or invalid meta.json / metrics.json) are
    skipped with one :class:`RunProblem` warning each naming the dir and the problem. Run dirs
    are not searched for nested runs. A run reachable via two paths is returned once, and so is
    a run found in two folders under one run id (see :func:`unique_runs`).
    """
    found: dict[Path, Run] = {}
    for root in [p for path in paths for p in sweep_run_dirs(path)]:
        root = Path(root)
        if not root.exists():
            raise ArtifactError(f"runs path {root} does not exist")
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            if not schema.is_run_dir(filenames, dirnames):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                continue
            dirnames[:] = []  # a run dir is a leaf
            p = Path(dirpath)
            key = p.resolve()
            if key in found:
                continue
            try:
                found[key] = load_run(p)
            except ArtifactError as exc:
                warnings.warn(RunProblem(p, f"skipping {exc}"), stacklevel=2)
    return unique_runs(found[k] for k in sorted(found, key=str))


def sweep_run_dirs(path: str | os.PathLike) -> list[Path]:
    """A Hydra sweep folder (``runs/_hydra/<time>_multirun``) stands for the run dirs its
    ``runs.txt`` lists (relative to it); any other path for itself."""
    path = Path(path)
    listing = path / "runs.txt"
    if not listing.is_file():
        return [path]
    return [path / line.strip() for line in listing.read_text().splitlines() if line.strip()]


def unique_runs(runs: Iterable[Run]) -> list[Run]:
    """``runs`` with one run per run id, the first of each kept.

    A run id holds the config hash and seed, so two run dirs with one id are one config run
    twice -- typically a job rerun under another ``experiment_name``. Analyses index runs by
    id, so the copies after the first are left out, with one warning naming them all and
    saying whether their metrics equal the kept run's.
    """
    kept: dict[str, Run] = {}
    dropped = []
    for r in runs:
        first = kept.setdefault(r.run_id, r)
        if first is not r and first != r:
            same = "same metrics" if first.metrics.get("splits") == r.metrics.get("splits") else "metrics differ"
            dropped.append(f"{r.path} (kept {first.path}; {same})")
    if dropped:
        warnings.warn(f"{len(dropped)} run dir(s) left out as second copies of a run (same run id, i.e. config "
                      f"hash and seed; e.g. rerun under another experiment_name): {', '.join(dropped)}",
                      stacklevel=3)
    return list(kept.values())


def _flatten_metrics(d: Mapping, prefix: str = "") -> Iterable[tuple[str, float]]:
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flatten_metrics(v, name + ".")
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            yield name, float(v)
        elif v is None:
            yield name, math.nan
        # lists and strings (e.g. the names of empty distance bins) are not scalar metrics


def run_record(run: Run) -> dict:
    """The per-run columns of :func:`runs_frame`; ``teacher_run`` is the teacher's run_id."""
    teacher_id = None
    if run.teacher_path is not None:
        try:
            teacher_id = run.teacher.run_id if run.teacher is not None else None
        except ArtifactError as exc:
            warnings.warn(RunProblem(run.teacher_path, f"{exc}; teacher_run left empty"), stacklevel=3)
    return {
        "run": run.run_id,
        "run_dir": str(run.path),
        "task": run.task,
        "model": run.model,
        "role": run.role,
        "distill": run.distill,
        "objective": run.objective,
        "teacher_run": teacher_id,
        "teacher_model": run.teacher_model,
        "seed": run.seed,
        "alpha": run.alpha,
        "temperature": run.temperature,
        "experiment": run.meta.get("experiment"),
        "config_hash": run.meta.get("config_hash"),
        "transfer": run.transfer,
        "transfer_n": run.transfer_n,
    }


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Tidy frame: one row per run x split x scalar metric, from metrics.json only.

    Nested metric objects are flattened with dots (``per_bin.3``); non-numeric values are left
    out. Per-example outputs are never read here.
    """
    rows = []
    for run in runs:
        rec = run_record(run)
        for split in run.splits:
            for metric, value in _flatten_metrics(run.metrics["splits"][split]):
                rows.append({**rec, "split": split, "metric": metric, "value": value})
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    frame["value"] = frame["value"].astype(float)
    return frame


def with_teachers(runs: Iterable[Run]) -> list[Run]:
    """``runs`` plus every teacher they name that is not already among them (as the same dir
    or the same run id); a teacher that cannot be loaded is left out with a :class:`RunProblem`."""
    def problem(run: Run, exc: ArtifactError) -> None:
        warnings.warn(RunProblem(run.teacher_path, str(exc)), stacklevel=4)

    return artifacts.with_teachers(runs, lambda r: r.teacher, lambda r: r.run_id, problem)


def check_arrays(run: Run) -> None:
    """Read every per-example array of ``run`` (outputs of each split, final and step
    features) once; raises :class:`ArtifactError` naming the first that is missing or corrupt."""
    for split in run.output_splits():
        run.outputs(split)
    if run.has_features("final"):
        run.features("final")
    for step in run.feature_steps():
        run.features(step)


def readable_runs(runs: Iterable[Run]) -> list[Run]:
    """The runs whose per-example arrays all load (:func:`check_arrays`); each other run is left
    out with one :class:`RunProblem` warning naming its dir and the first bad file.

    Reads every array once, so later analyses can read them without failing half-way.
    """
    out = []
    for r in runs:
        try:
            check_arrays(r)
        except ArtifactError as exc:
            warnings.warn(RunProblem(r.path, f"skipping {r.path}: {exc}"), stacklevel=2)
            continue
        out.append(r)
    return out
