"""A hyperparameter search's trials as one table: ``python -m analysis.search SWEEP --out F.csv``.

One row per trial (a job folder of the search's sweep folder): the settings the sweeper chose
(its job overrides of the searched keys), the objective as the search read it
(``optimized_metric``, the last logged value of the run's ``logs/metrics.csv``) and each eval
split's accuracy of the run, with the trial the sweeper reported best marked.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from analysis.runs import load_run
from biaskd.errors import ArtifactError
from biaskd.record.optimized_metric import last_logged
from biaskd.record.sweep import RUN_FILE

RESULTS = "optimization_results.yaml"  # the Optuna sweeper's summary in the sweep folder


def _job_number(job: Path) -> int:
    return int(job.name) if job.name.isdigit() else -1


def trials(sweep: str | Path) -> pd.DataFrame:
    """The trials of the search in sweep folder ``sweep``, in the order they ran."""
    sweep = Path(sweep)
    results = sweep / RESULTS
    if not results.is_file():
        raise ArtifactError(f"{results}: missing; {sweep} is not the folder of a finished search "
                            "(biaskd -m hparams_search=...)")
    summary = yaml.safe_load(results.read_text())
    searched = list(summary["best_params"])
    rows, parser = [], OverridesParser.create()
    for job in sorted((j for j in sweep.iterdir() if (j / RUN_FILE).is_file()), key=_job_number):
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        chosen = {o.key_or_group: o.value() for o in parser.parse_overrides(overrides)}  # as Hydra read them
        run = load_run((job / RUN_FILE).read_text().strip())
        metric = config["optimized_metric"]
        row = {"trial": _job_number(job), **{k: chosen[k] for k in searched if k in chosen},
               "objective": metric, "value": last_logged(run.path, metric)}
        row.update({f"acc_{s}": run.metric(s, "accuracy") for s in sorted(run.splits)})
        attractors = [row[f"acc_attractors_{k}"] for k in (1, 2, 3, 4) if f"acc_attractors_{k}" in row]
        if attractors:
            row["a_accuracy"] = sum(attractors) / len(attractors)
        rows.append({**row, "run": run.run_id})
    frame = pd.DataFrame(rows)
    frame.insert(len(searched) + 3, "best", [math.isclose(v, summary["best_value"], rel_tol=0, abs_tol=1e-12)
                                              for v in frame["value"]])
    return frame


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.search", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the search's sweep folder (runs/_hydra/<time>_multirun)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    args = parser.parse_args(argv)
    frame = trials(args.sweep)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False, float_format="%.6g")
    print(frame.drop(columns=["run"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\n{len(frame)} trials -> {args.out}")
    return 0


if __name__ == "__main__":
    from analysis.command import run

    sys.exit(run(main))
