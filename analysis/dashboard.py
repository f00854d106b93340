"""A finished report in W&B: its tables as W&B Tables and its figures as images, in one run.

    python -m analysis.report RUNS... --out DIR --wandb      # write the report, then log it
    python -m analysis.dashboard DIR [--group NAME]          # log a report folder already written
                                                             # (also analysis.reference's output)

The run has ``job_type="analysis"`` and the sweep's group (its runs' ``experiment_name``), so it
sits in the W&B workspace beside the teacher and student runs it summarises. Every CSV under the
folder becomes a Table keyed by its path (``transfer``, ``agreement``, ``vision/claims`` …),
every PNG an image (``figures/<name>``), and the Markdown files are saved with the run. Like
training, it logs offline unless W&B credentials exist (see :func:`biaskd.wandb_logging.wandb_mode`);
the offline run is in ``DIR/wandb/offline-run-*``, uploaded later with ``wandb sync``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from biaskd.errors import ArtifactError

#: W&B refuses larger Tables logged to a run; longer CSVs are cut (the whole file is saved too)
MAX_TABLE_ROWS = 10_000


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def log_report(folder: str | Path, group: str | None = None, project: str = "biaskd",
               entity: str | None = None, mode: str | None = None, name: str | None = None) -> Path:
    """Log the report in ``folder`` to one W&B run; returns the run's local folder."""
    from biaskd import extras

    if not extras.installed("wandb"):
        raise SystemExit(f"error: {extras.message('wandb')}")
    import wandb

    from biaskd.wandb_logging import wandb_mode

    root = Path(folder).resolve()
    if not root.is_dir():
        raise ArtifactError(f"report folder {folder} does not exist (write one with python -m analysis.report RUNS "
                            f"--out {folder})")
    csvs = sorted(p for p in root.rglob("*.csv") if "wandb" not in p.relative_to(root).parts)
    pngs = sorted(p for p in root.rglob("*.png") if "wandb" not in p.relative_to(root).parts)
    docs = sorted(p for p in root.rglob("*.md") if "wandb" not in p.relative_to(root).parts)
    mode = wandb_mode(mode)
    group = group or "analysis"
    run = wandb.init(project=project, entity=entity, group=group, job_type="analysis",
                     name=name or f"analysis-{group}", dir=str(root), mode=mode,
                     config={"report": str(root), "tables": len(csvs), "figures": len(pngs)})
    try:
        keep, logged = list(docs), {}  # keep: saved with the run as files
        for path in csvs:
            frame = pd.read_csv(path)
            if len(frame) > MAX_TABLE_ROWS:
                print(f"  {path.name}: {len(frame)} rows, the first {MAX_TABLE_ROWS} as a W&B Table "
                      "(the whole CSV is saved with the run)", file=sys.stderr)
                frame = frame.head(MAX_TABLE_ROWS)
                keep.append(path)
            logged[_key(path, root)] = wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))
        for path in pngs:
            logged[f"figures/{_key(path, root)}"] = wandb.Image(str(path), caption=path.stem)
        run.log(logged)
        for path in keep:
            run.save(str(path), base_path=str(root), policy="now")
        local = Path(run.dir).parent
    finally:
        run.finish()
    print(f"logged {len(csvs)} table(s) and {len(pngs)} figure(s) to W&B run {run.name!r} "
          f"(job_type analysis, group {group!r}, {mode})" +
          (f"; upload with: wandb sync {local}" if mode == "offline" else ""), file=sys.stderr)
    return local


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.dashboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="a report folder (report.md, CSVs, PNGs)")
    ap.add_argument("--group", default=None, help="W&B group: the sweep's experiment_name (default: analysis)")
    ap.add_argument("--project", default="biaskd", help="W&B project (default: biaskd, as logger=wandb)")
    ap.add_argument("--entity", default=None)
    args = ap.parse_args(argv)
    log_report(args.folder, group=args.group, project=args.project, entity=args.entity)
    return 0


if __name__ == "__main__":
    from analysis.command import run

    sys.exit(run(main))
