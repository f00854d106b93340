"""Write a Markdown report (tables, PNG figures, CSVs) for a set of run dirs.

    python -m analysis.report RUNS... --out DIR [--measure linear_cka] [--seed 0]

RUNS are run dirs or folders containing them (sweep dirs). Teachers named by the runs are
added even when they live elsewhere. Every section states what it could not compute and why
(no teacher, one seed, no intermediate features, ...) instead of failing. Run dirs that are
incomplete, failed or corrupt (including unreadable per-example arrays), and second copies of
one run under another experiment folder, are left out, each named once under "Notes on the
inputs". Artifacts that are inconsistent across runs (e.g. different probe sets) stop only the
section that needs them, with the reason in its place, since its numbers would be wrong.

This module is the command and the order of the sections; the sections are in
:mod:`analysis.sections_metrics` and :mod:`analysis.sections_representations`, the Markdown
and files they write in :mod:`analysis.markdown`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from biaskd.errors import ArtifactError
from biaskd.record.sweep import duration

from analysis import similarity
from analysis.markdown import Report, markdown_table  # noqa: F401  (the report's API, re-exported)
from analysis.runs import RunProblem, find_runs, readable_runs, runs_frame, with_teachers
from analysis.sections_metrics import (
    section_agreement,
    section_calibration,
    section_metrics,
    section_paired,
    section_runs,
    section_severity,
    section_transfer,
)
from analysis.sections_representations import section_basins, section_drift, section_paths, section_similarity
from analysis.style import Style


#: what each section's progress line calls it
SECTION_NAMES = {
    "section_runs": "runs", "section_metrics": "metrics per split", "section_severity": "accuracy vs severity",
    "section_transfer": "transfer ratio", "section_paired": "paired tests", "section_agreement": "agreement",
    "section_similarity": "similarity and MDS maps", "section_paths": "training paths", "section_basins": "basins",
    "section_drift": "drift", "section_calibration": "calibration",
}


class Progress:
    """One line per finished step on stderr: ``[report 6/11] agreement: 4.2s (31s in all)``."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()

    def note(self, text: str) -> None:
        """One line on stderr that is not a step (a run dir left out)."""
        if self.enabled:
            print(" ".join(text.split()), file=self.stream, flush=True)

    def step(self, what: str) -> None:
        now = time.perf_counter()
        self.done += 1
        if self.enabled:
            print(f"[report {self.done}/{self.total}] {what}: {duration(now - self.last)} "
                  f"({duration(now - self.start)} in all)", file=self.stream, flush=True)
        self.last = now


def build_report(paths: Sequence[str | Path], out: str | Path, *, measure: str = "linear_cka",
                 seed: int = 0, progress: bool = True, require_runs: bool = False) -> Path:
    """Write ``out/report.md`` with its figures and CSVs; returns the report's path. With
    ``progress``, a line on stderr after reading the runs and after each section, and one for
    each run dir left out (as in the report's notes). With ``require_runs``, no complete run dir
    under ``paths`` is an :class:`ArtifactError` (and no report is written) instead of a report
    that says so."""
    out = Path(out)
    rep = Report(out)
    steps = Progress(total=1 + len(SECTION_NAMES), enabled=progress)
    with _each_warning_once():
        return _build(rep, steps, paths, measure, seed, require_runs)


class _OncePerMessage(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.getMessage()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextlib.contextmanager
def _each_warning_once():
    """biaskd's log warnings once each while the report runs (rebuilding a task's data for the
    basins repeats the data's own notes), where nothing else handles them (no logging set up)."""
    log = logging.getLogger("biaskd")
    if logging.getLogger().handlers or log.handlers:
        yield
        return
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.addFilter(_OncePerMessage())
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def _build(rep: Report, steps: Progress, paths: Sequence[str | Path], measure: str, seed: int,
           require_runs: bool = False) -> Path:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = readable_runs(with_teachers(find_runs(*paths)))
        frame = runs_frame(runs)
    if not runs and require_runs:
        notes = _notes(caught)
        raise ArtifactError("no complete run dirs under " + ", ".join(map(str, paths))
                            + (f" ({len(notes)} left out; the first: {notes[0]})" if notes else
                               " (a run dir holds meta.json and COMPLETE; a sweep folder lists its run dirs in "
                               "runs.txt)"))
    steps.step(f"read {len(runs)} run dir(s)")
    for note in _notes([w for w in caught if isinstance(w.message, RunProblem)]):
        steps.note(f"[report] {note}")
    rep.style = Style(runs)  # one label and colour per configuration in every table and figure
    rep.lines += ["# biaskd analysis report", "",
                  f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
                  f"`python -m analysis.report`.", ""]
    notes = _notes(caught)
    if notes:
        rep.h(2, "Notes on the inputs")
        rep.lines += [f"- {n}" for n in notes] + [""]
    if not runs:
        rep.missing("no complete run dirs found under " + ", ".join(map(str, paths)) + ".")
        return rep.write()
    sections = [
        (section_runs, runs, frame, [str(p) for p in paths]),
        (section_metrics, frame),
        (section_severity, frame),
        (section_transfer, frame),
        (section_paired, frame),
        (section_agreement, runs),
        (section_similarity, runs, measure, seed),
        (section_paths, runs, measure, seed),
        (section_basins, runs),
        (section_drift, runs),
        (section_calibration, runs),
    ]
    for section, *args in sections:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.filterwarnings("always", message=".*catastrophic cancellation.*", category=RuntimeWarning)
                section(rep, *args)
        except ArtifactError as exc:  # artifacts inconsistent across runs: this section only
            import matplotlib.pyplot as plt

            plt.close("all")
            rep.missing(f"this section stopped: {exc}")
        cancelled = [w for w in caught if "catastrophic cancellation" in str(w.message)]
        if cancelled:  # said in the report, where it matters, instead of on the terminal
            rep.p("Note: some values compared here are (nearly) identical on every seed, so scipy's t statistics "
                  "for them lose precision (its warning); their intervals and p-values are not reliable.")
        for w in caught:
            if w not in cancelled:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # the others as they were
        steps.step(SECTION_NAMES.get(section.__name__, section.__name__))
    return rep.write()


def _notes(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """The warnings' messages, sorted, with one (the first) per run dir a :class:`RunProblem` names."""
    notes: dict[object, str] = {}
    for w in caught:
        key = w.message.path.resolve() if isinstance(w.message, RunProblem) else str(w.message)
        notes.setdefault(key, str(w.message))
    return sorted(set(notes.values()))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run dirs or folders containing run dirs")
    ap.add_argument("--out", required=True, help="output folder for report.md, PNGs and CSVs")
    ap.add_argument("--measure", default="linear_cka", choices=sorted(similarity.MEASURES),
                    help="representational similarity for the heatmap, MDS map and training paths")
    ap.add_argument("--seed", type=int, default=0, help="random_state of the MDS maps")
    ap.add_argument("--wandb", action="store_true",
                    help="also log the report's tables and figures to one W&B run (job_type analysis; offline "
                         "without credentials)")
    ap.add_argument("--wandb-group", default=None,
                    help="W&B group of that run (default: the runs' experiment_name, when they share one)")
    ap.add_argument("--wandb-project", default="biaskd", help="W&B project (default: biaskd, as logger=wandb)")
    args = ap.parse_args(argv)
    path = build_report(args.runs, args.out, measure=args.measure, seed=args.seed, require_runs=True)
    print(f"wrote {path}", file=sys.stderr)
    if args.wandb:
        from analysis.dashboard import log_report

        log_report(args.out, group=args.wandb_group or _experiment_group(Path(args.out)), project=args.wandb_project)
    return 0


def _experiment_group(out: Path) -> str | None:
    """The students' ``experiment_name`` when they share one (the W&B group their runs are in)."""
    try:
        runs = pd.read_csv(out / "runs_long.csv", usecols=["role", "experiment"])
    except (FileNotFoundError, ValueError):
        return None
    names = runs.loc[runs["role"] != "teacher", "experiment"].dropna().unique()
    return str(names[0]) if len(names) == 1 else None


if __name__ == "__main__":
    from analysis.command import run

    sys.exit(run(main))
