"""The ``biaskd`` command: a Hydra app over the config tree in ``conf/``.

    biaskd                                   # one run (defaults: MNIST, MLP, no distillation)
    biaskd model=cnn                         # another model
    biaskd -m experiment=mnist_main          # the README's main job (a sweep)

After every job one summary line is printed; after a sweep, one table of all its runs and the
teachers they used. The project's own errors (bad config, data or artifact; a failed training)
print one line, and a hint where one helps, and exit with status 2; ``HYDRA_FULL_ERROR=1`` or
``BIASKD_VERBOSE=1`` shows the traceback.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from biaskd.errors import BiaskdError
from biaskd.sweep import FAILURE_FILE  # in a failed job's Hydra output dir: what failed

log = logging.getLogger("biaskd")

#: exit status of a run or sweep stopped by one of the project's own errors
ERROR_EXIT = 2


def describe(exc: BaseException) -> str:
    """One line (two with a hint) a person reads: ``ConfigError: config key 'x' must be ...``."""
    return f"{type(exc).__name__}: {exc}"

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@dataclass
class JobFailure:
    """What a job returns when one of the project's own errors stopped it (the error is
    reported once, by :class:`SummaryCallback`, instead of as a traceback)."""

    message: str


_state: dict[str, Any] = {"failed": 0, "started": False}


class SummaryCallback(Callback):
    """Prints one line per finished job (``[job failed] ...`` for a failed one) and, in a sweep,
    how far it is (``[sweep] 3/12 jobs done · elapsed · about … left``); after a sweep, writes
    ``runs.txt`` into the sweep folder (:mod:`biaskd.sweep`) and, through ``summarize``,
    ``summary.csv`` and ``summary.md``, prints the accuracy table and says how many jobs failed.

    ``summarize``: the dotted name of ``f(sweep_dir, failed=n) -> (summary.md path, table text) |
    None`` that writes the sweep's summaries (and ``runs.txt``); the config names
    :func:`analysis.sweep_summary.write_summary`. Given by name, so training code does not
    import the analysis; without one, only ``runs.txt`` is written."""

    def __init__(self, summarize: str | None = None) -> None:
        self.runs: list[Any] = []
        self.job_started = time.time()
        self.summarize = summarize

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from biaskd import sweep
        from biaskd.summary import summary_line

        if job_return.status != JobStatus.COMPLETED or job_return.return_value is None:
            return  # a bug's exception: Hydra/main() show its traceback
        result = job_return.return_value
        objective = ""
        if isinstance(result, float):  # a search's objective (optimized_metric): the run is kept aside
            result, objective = _state.pop("run"), f" · {config.optimized_metric}={result:.4f}"
        multirun = config.hydra.mode.name == "MULTIRUN"
        if isinstance(result, JobFailure):
            _state["failed"] += 1
            if multirun:
                line = f"[job failed] {' '.join(job_return.overrides)}: {result.message}"
                print(line, file=sys.stderr, flush=True)
                _to_job_log(line, logging.ERROR)
            else:
                print(f"error: {result.message}", file=sys.stderr, flush=True)
        else:
            self.runs.append(result)
            sweep.record_job(config.hydra.runtime.output_dir, result.path)
            line = summary_line(result, since=self.job_started) + objective
            print(line, flush=True)
            _to_job_log(line)
        if multirun:
            line = sweep.progress_line(config.hydra.sweep.dir)
            if line:
                print(line, file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from biaskd import sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob(f"*/{FAILURE_FILE}")) if sweep_dir.is_dir() else []
        written = self._summarize(sweep_dir, failed=len(failed))
        if written:  # from the sweep folder, so jobs run in other processes count too
            path, table = written
            print(f"\n{table}\n\nsummary (mean ± 95% CI over seeds): {path}, summary.csv and paired.csv; run dirs: "
                  f"{sweep_dir / sweep.RUNS_FILE}\nreport: python -m analysis.report {sweep_dir} --out <folder>",
                  flush=True)
            if config.get("sweep_note"):
                print(f"\n{config.sweep_note}", flush=True)
        if failed:
            _state["failed"] = max(_state["failed"], len(failed))
            print(f"{len(failed)} job(s) failed (the [job failed] lines above; also in "
                  f"{sweep_dir}/<job>/{FAILURE_FILE}); rerun the same command to retry them, completed jobs are kept",
                  file=sys.stderr, flush=True)

    def _summarize(self, sweep_dir: Path, failed: int) -> tuple[Path, str] | None:
        from biaskd import sweep

        if self.summarize:
            from hydra.utils import get_method

            return get_method(self.summarize)(sweep_dir, failed=failed)
        runs = sweep.sweep_runs(sweep_dir)
        if runs:
            sweep.write_runs_file(sweep_dir, runs)
        return None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        from biaskd.summary import format_table, summary_table, teacher_table

        if self.runs:
            print("\n" + format_table(summary_table(self.runs)), flush=True)
            measures = teacher_table(self.runs)
            if len(measures):
                print("\nagreement with the teacher per eval split, mean JS divergence, probe CKA:\n"
                      + format_table(measures), flush=True)


def _to_job_log(line: str, level: int = logging.INFO) -> None:
    """``line`` into the job's log file too (Hydra's ``<job dir>/biaskd.log``), not a second time on
    the console."""
    record = logging.LogRecord(log.name, level, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _refuse_a_sweep_without_m() -> None:
    """A recipe that sweeps (``hydra.sweeper.params``) run without ``-m`` would quietly do one run
    of it: a ConfigError, unless the command line sets every swept key (one run of the sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    params = OmegaConf.select(hc, "sweeper.params") or {}
    if hc.mode != RunMode.RUN or not params:
        return
    task = list(hc.overrides.task)
    given = {o.get_key_element().lstrip("+~") for o in OverridesParser.create().parse_overrides(task)}
    unset = [k for k in params if k not in given]
    if unset:
        from biaskd.errors import ConfigError

        recipe = next((o for o in task if o.split("=")[0] in ("experiment", "hparams_search")), "the config")
        raise ConfigError(f"{recipe} is a sweep over {', '.join(params)}: add -m to run it (biaskd -m "
                          f"{' '.join(task)}), or set {', '.join(unset)} on the command line for one of its runs")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _app(cfg: DictConfig):
    _state["started"] = True
    try:
        from biaskd.config import check

        _refuse_a_sweep_without_m()
        check(cfg)  # a bad config speaks before the training stack is imported
        from biaskd.train import train

        run = train(cfg)
        if run is None:  # trainer.fast_dev_run: nothing was kept (its line is in the log)
            return None
        if cfg.get("optimized_metric"):  # a search: the sweeper gets a number, the callback the run
            from biaskd.search import last_logged

            _state["run"] = run
            return last_logged(run.path, str(cfg.optimized_metric))
        return run
    except BiaskdError as exc:
        if _verbose():
            raise
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / FAILURE_FILE).write_text(describe(exc) + "\n")
        return JobFailure(describe(exc))


def _verbose() -> bool:
    return os.environ.get("BIASKD_VERBOSE") == "1" or os.environ.get("BIASKD_USER_FULL_ERROR") == "1"


def main() -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the Optuna sweeper's storage layer: plugin lines
    os.environ.setdefault("BIASKD_USER_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", "0"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # exceptions reach main() instead of Hydra's traceback printer
    try:
        _app()
    except Exception as exc:
        from hydra.errors import CompactHydraException

        if _state["failed"] and not _verbose():  # a sweeper (e.g. Optuna's) gave up on failed jobs
            print(f"error: the sweep stopped after {_state['failed']} failed job(s) (the [job failed] lines above): "
                  f"{describe(exc)}", file=sys.stderr)
            sys.exit(ERROR_EXIT)
        if _verbose() or (_state["started"] and not isinstance(exc, CompactHydraException)):
            raise  # a bug: its traceback
        from biaskd.extras import hint_for

        # the command line could not be composed into a config (unknown key, bad override, a launcher
        # whose optional package is missing)
        if hint_for(exc):
            print(f"error: {hint_for(exc)}", file=sys.stderr)
        elif "srun" in str(exc):  # the SLURM launcher off a cluster
            print("error: hydra/launcher=slurm submits SLURM jobs, but SLURM is not here (no `srun`); run the command "
                  "on the cluster, or use hydra/launcher=basic or parallel", file=sys.stderr)
        elif isinstance(exc, CompactHydraException):
            print(f"error: {exc}" + (f"\n{exc.__cause__}" if exc.__cause__ else ""), file=sys.stderr)
        else:
            print(f"error: cannot apply the command line's overrides ({type(exc).__name__}: {exc}); a list in the "
                  "config is indexed by position, e.g. task.ood.0.severity=4", file=sys.stderr)
        sys.exit(1)
    if _state["failed"]:
        sys.exit(ERROR_EXIT)


if __name__ == "__main__":  # python -m biaskd.cli: run the imported module, which Hydra's callback shares
    from biaskd.cli import main as _main

    sys.exit(_main())
