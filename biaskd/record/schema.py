"""The run-dir format: file names, keys, versions, and what makes each artifact valid.

One definition for the writer (:class:`biaskd.record.artifacts.RunDir`) and the reader
(:class:`analysis.runs.Run`); README.md ("Run directory format") describes it for people.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from biaskd.errors import ArtifactError
from biaskd.pairwise import from_logits

FORMAT = "biaskd-run"
#: 2: MANIFEST.json and digest sidecars; teachers trained from their own config alone (new hashes)
FORMAT_VERSION = 2
#: versions readers accept (version 1 has no manifest to check against)
READABLE_VERSIONS = (1, 2)
#: the first version whose complete runs hold MANIFEST.json (one without it is damaged)
MANIFEST_SINCE = 2

# -- names --------------------------------------------------------------------------------------------
META = "meta.json"
CONFIG = "config.yaml"
METRICS = "metrics.json"
MODEL = "model.pt"
OUTPUTS = "outputs"
FEATURES = "features"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINTS}/last.ckpt"
TEACHER_CACHE = "teacher_cache"
TRANSFER = "transfer.npz"
MANIFEST = "MANIFEST.json"
COMPLETE = "COMPLETE"
FAILED = "FAILED"
DIGEST_SUFFIX = ".sha256"
TMP_SUFFIX = ".tmp"
LOG = "logs/metrics.csv"
#: key of ``last.ckpt`` holding the CSV log's text as it was when the checkpoint was written
CHECKPOINT_LOG = "biaskd_csv_log"
#: files whose presence makes a folder a run dir (one that lost its meta.json is still one)
MARKERS = (META, COMPLETE, FAILED, MANIFEST, MODEL)
#: folders that make a folder holding config.yaml a run dir (a folder of Hydra configs has none)
RUN_FOLDERS = (CHECKPOINTS, OUTPUTS, FEATURES, "logs")
#: names and top folders the manifest does not list (markers; what may change after completion)
UNLISTED_NAMES = frozenset({COMPLETE, FAILED, MANIFEST})
UNLISTED_DIRS = frozenset({TEACHER_CACHE, "wandb"})

_STEP_RE = re.compile(r"^step_(\d+)\.(npz|pt)$")


def is_run_dir(filenames: Iterable[str], dirnames: Iterable[str] = ()) -> bool:
    """Whether a folder holding ``filenames`` and ``dirnames`` is a run dir (a damaged one too:
    a complete run that lost its meta.json is still a run, to be reported, not passed over)."""
    files = set(filenames)
    return any(m in files for m in MARKERS) or (CONFIG in files and any(d in RUN_FOLDERS for d in dirnames))


def looks_like_run_dir(folder: Path) -> bool:
    """:func:`is_run_dir` of a folder on disk."""
    names = [n for n in (*MARKERS, CONFIG) if (folder / n).is_file()]
    return is_run_dir(names, [d for d in RUN_FOLDERS if (folder / d).is_dir()])


def _raw_json(path: Path) -> Any:
    """A small JSON file's content without any check (None if it is missing or not JSON)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _version(obj: Any) -> int:
    v = obj.get("format_version") if isinstance(obj, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def unverifiable(run_path: str | Path) -> str | None:
    """Why a complete run without a manifest cannot be trusted, or None when it needs none (an
    incomplete run, which writes it last; a format-1 run, which never had one). A complete run
    of a format that writes a manifest (``meta.json``'s or its ``COMPLETE`` marker's
    ``format_version``) and has none is damaged, and so is one without a readable meta.json."""
    run_path = Path(run_path)
    if (run_path / MANIFEST).exists() or not (run_path / COMPLETE).exists():
        return None
    meta_path = run_path / META
    if not meta_path.is_file():
        return f"{meta_path}: missing, and the run has no {MANIFEST} either"
    meta = _raw_json(meta_path)
    if not isinstance(meta, dict):
        return f"{meta_path}: not a JSON object, and the run has no {MANIFEST} to check it against"
    version = max(_version(meta), _version(_raw_json(run_path / COMPLETE)))
    if version >= MANIFEST_SINCE:
        return f"{run_path / MANIFEST}: missing (a complete format-{version} run writes it before {COMPLETE})"
    return None


def outputs_file(split: str) -> str:
    return f"{OUTPUTS}/{split}.npz"


def features_file(step: int | str = "final") -> str:
    return f"{FEATURES}/final.npz" if step == "final" else f"{FEATURES}/step_{int(step):09d}.npz"


def weights_file(step: int | str = "final") -> str:
    return MODEL if step == "final" else f"{CHECKPOINTS}/step_{int(step):09d}.pt"


def step_of(name: str, suffix: str) -> int | None:
    """The training step in a ``step_XXXXXXXXX.<suffix>`` file name, else None."""
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m and m.group(2) == suffix else None


# -- meta.json and metrics.json -----------------------------------------------------------------------
REQUIRED_META_KEYS = ("format", "format_version", "run_id", "task", "model", "role", "distill", "seed",
                      "num_classes")


def check_meta(meta: Any, where: str) -> dict:
    """``meta`` if it is a readable run's meta.json, else ArtifactError naming ``where``."""
    if not isinstance(meta, dict):
        raise ArtifactError(f"run {where}: meta.json is not an object")
    missing = [k for k in REQUIRED_META_KEYS if k not in meta]
    if missing:
        raise ArtifactError(f"run {where}: meta.json lacks {missing}")
    if meta["format"] != FORMAT or meta["format_version"] not in READABLE_VERSIONS:
        raise ArtifactError(
            f"run {where}: unsupported format {meta['format']!r} v{meta['format_version']} "
            f"(this reader knows {FORMAT!r} v{list(READABLE_VERSIONS)})"
        )
    return meta


def check_metrics(metrics: Any, where: str) -> dict:
    """``metrics`` if it has the ``splits`` object every metrics.json has."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("splits"), dict):
        raise ArtifactError(f"run {where}: metrics.json has no 'splits' object")
    return metrics


# -- outputs/<split>.npz ---------------------------------------------------------------------------------
OUTPUT_ARRAYS = ("logits", "labels", "ids")
#: prefix of per-example metadata arrays (``meta_severity``, ``meta_attractors``, ...)
META_PREFIX = "meta_"


def outputs_arrays(logits, labels, ids, meta: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an outputs file: float32 logits (n, C), int64 labels and ids, ``meta_<key>``."""
    arrays = {"logits": np.asarray(logits, dtype=np.float32), "labels": np.asarray(labels, dtype=np.int64),
              "ids": np.asarray(ids, dtype=np.int64)}
    arrays.update({f"{META_PREFIX}{k}": np.asarray(v) for k, v in (meta or {}).items()})
    return arrays


@dataclass(frozen=True)
class SplitOutputs:
    """Per-example outputs of one run on one eval split."""

    run: str
    split: str
    logits: np.ndarray  # float32 (n, C)
    labels: np.ndarray  # int64 (n,)
    ids: np.ndarray  # int64 (n,)
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (n,) array

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def probs(self) -> np.ndarray:
        """Softmax of the logits in float64 (numerically stable)."""
        return from_logits(self.logits)

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logits, axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels


def split_outputs(arrays: Mapping[str, np.ndarray], run: str, split: str, num_classes: int,
                  path) -> SplitOutputs:
    """The validated :class:`SplitOutputs` of an outputs file's arrays (ArtifactError naming
    ``path`` for missing arrays, inconsistent shapes, non-finite logits, duplicate ids)."""
    missing = [k for k in OUTPUT_ARRAYS if k not in arrays]
    if missing:
        raise ArtifactError(f"run {run}: {path} lacks array(s) {missing}")
    logits, labels, ids = arrays["logits"], arrays["labels"], arrays["ids"]
    n = labels.shape[0] if labels.ndim == 1 else -1
    if logits.ndim != 2 or labels.ndim != 1 or ids.shape != labels.shape or logits.shape[0] != n \
            or logits.shape[1] != num_classes:
        raise ArtifactError(
            f"run {run}: {path} has inconsistent shapes logits{logits.shape} "
            f"labels{labels.shape} ids{ids.shape} (num_classes={num_classes})"
        )
    if not np.all(np.isfinite(logits)):
        raise ArtifactError(f"run {run}: {path} has non-finite logits")
    if len(np.unique(ids)) != len(ids):
        raise ArtifactError(f"run {run}: {path} has duplicate example ids")
    meta = {}
    for k, v in arrays.items():
        if k.startswith(META_PREFIX):
            if v.shape[:1] != (n,):
                raise ArtifactError(f"run {run}: {path} array {k} has shape {v.shape}, expected ({n},)")
            meta[k[len(META_PREFIX):]] = v
    return SplitOutputs(run, split, logits, labels.astype(np.int64), ids.astype(np.int64), meta)


# -- features/*.npz ----------------------------------------------------------------------------------------
FEATURE_ARRAYS = ("features", "ids")


@dataclass(frozen=True)
class Features:
    """Probe-set features of one run at one training step."""

    run: str
    step: int
    features: np.ndarray  # float32 (n_probe, d)
    ids: np.ndarray  # int64 (n_probe,)


def features_record(arrays: Mapping[str, np.ndarray], run: str, step: int, probe_n: int | None, path) -> Features:
    """The validated :class:`Features` of a features file (``step``: the file's own ``step``
    array if it has one, else the one given)."""
    missing = [k for k in FEATURE_ARRAYS if k not in arrays]
    if missing:
        raise ArtifactError(f"run {run}: {path} lacks array(s) {missing}")
    x, ids = arrays["features"], arrays["ids"]
    if x.ndim != 2 or ids.shape != (x.shape[0],):
        raise ArtifactError(f"run {run}: {path} has features{x.shape} and ids{ids.shape}")
    if not np.all(np.isfinite(x)):
        raise ArtifactError(f"run {run}: {path} has non-finite features")
    if probe_n is not None and int(probe_n) != x.shape[0]:
        raise ArtifactError(
            f"run {run}: {path} has {x.shape[0]} probe examples but meta.json says probe n={probe_n}"
        )
    if "step" in arrays:
        step = int(np.asarray(arrays["step"]))
    return Features(run, step, x, ids.astype(np.int64))
