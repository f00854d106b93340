"""What a run returns to a Hydra sweeper that searches hyperparameters (the Optuna sweeper), read
from its record: the config key ``optimized_metric`` names the column. A search's trials as one
table are :mod:`analysis.search`.

With ``optimized_metric=valid/loss`` (or ``valid/accuracy``: :data:`VALIDATION_METRICS`), a job
returns that column's last value in the run's ``logs/metrics.csv``, the one after the final epoch.
Validation is logged as every eval split is, ``<split>/accuracy``; logs written before that name
``valid/acc`` (:data:`FORMER_NAMES`), and are read under either name.
Searches choose settings on the validation split; the recipes are in ``conf/hparams_search/``.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from biaskd.errors import ArtifactError, ConfigError
from biaskd.record import artifacts

#: the run's per-epoch log, relative to its run dir
LOG = Path("logs") / "metrics.csv"
#: what a search may optimise: the validation columns every training module logs each epoch
VALIDATION_METRICS = ("valid/loss", "valid/accuracy")
#: a metric's column name in logs written before it was renamed
FORMER_NAMES = {"valid/accuracy": "valid/acc", "valid/acc": "valid/accuracy"}


def last_logged(run_path: str | Path, metric: str) -> float:
    """The last finite value of column ``metric`` in the run's ``logs/metrics.csv``."""
    path = Path(run_path) / LOG
    try:
        artifacts.check_file(path)  # the number a search acts on: from the log the run's manifest records
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if metric not in (reader.fieldnames or []) and FORMER_NAMES.get(metric) in (reader.fieldnames or []):
                metric = FORMER_NAMES[metric]  # a log from before the rename (or a search config from then)
            if metric not in (reader.fieldnames or []):
                logged = sorted(c for c in reader.fieldnames or [] if c not in ("epoch", "step"))
                raise ConfigError(f"config key 'optimized_metric': {metric!r} is not logged in {path}; "
                                  f"logged: {', '.join(logged)}")
            values = [float(row[metric]) for row in reader if row.get(metric) not in (None, "")]
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing (the run's per-epoch log, where optimized_metric is read)") from None
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        raise ArtifactError(f"{path}: column {metric!r} has no finite value")
    return finite[-1]
