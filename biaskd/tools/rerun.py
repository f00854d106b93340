"""Retrain a run from its recorded ``config.yaml`` alone, into another runs folder.

    python -m biaskd.rerun RUN_DIR --runs-dir DIR [--data-dir D]

Works for teachers and students (a student's teacher is trained anew under ``DIR/teachers``).
``config.yaml`` is checked against the run's manifest first: a changed or damaged one is an
error (exit status 2), not another run.
The new run is then compared with the original (:func:`biaskd.record.reproduce.compare_runs`): bit for bit
where both were made on machines with one signature, else within the cross-machine tolerances; one
line says which check it was and how it went (exit status 1 if the runs differ). The new run dir
is printed on the last line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from biaskd.errors import ArtifactError, BiaskdError
from biaskd.record import artifacts


def rerun(run_dir: str | Path, runs_dir: str | Path, data_dir: str | Path | None = None):
    """Train the run recorded in ``run_dir`` again under ``runs_dir``; returns its RunDir."""
    from biaskd import config as config_mod
    from biaskd.run.train import train

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; is {run_dir} a run dir?")
    try:  # before anything is read from it: a changed or damaged config would train another run
        problem = artifacts.file_problem(path)
    except ArtifactError as exc:  # the manifest itself is damaged
        problem = str(exc)
    if problem is not None:
        raise ArtifactError(f"{path} fails its manifest ({problem})")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # a run without a manifest (format 1) can hold anything
        raise ArtifactError(f"{path}: not a readable config ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if Path(runs_dir).resolve() == Path(run_dir).resolve().parent.parent:
        raise ArtifactError(f"--runs-dir {runs_dir} holds {run_dir} itself; choose another folder to retrain into")
    cfg.runs_dir = str(Path(runs_dir).resolve())
    if data_dir is not None:
        cfg.data_dir = str(Path(data_dir).resolve())
        cfg.task.data_dir = cfg.data_dir
    config_mod.check(cfg)
    return train(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m biaskd.rerun", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run dir (teacher or student) holding config.yaml")
    parser.add_argument("--runs-dir", required=True, help="the runs folder to train into (not the run's own)")
    parser.add_argument("--data-dir", default=None, help="data folder, if not where the original run found it")
    args = parser.parse_args(argv)
    from biaskd.record.artifacts import RunDir
    from biaskd.record.reproduce import compare_runs

    try:
        run = rerun(args.run_dir, args.runs_dir, args.data_dir)
        result = compare_runs(run, RunDir(args.run_dir))
    except BiaskdError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"{run.path.name} vs {args.run_dir}: {result.line()}")
    print(run.path)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
