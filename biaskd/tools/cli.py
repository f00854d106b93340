"""The ``biaskd`` command: a Hydra app over the config tree in ``conf/``.

    biaskd                                   # one run (defaults: MNIST, MLP, no distillation)
    biaskd model=cnn                         # another model
    biaskd -m experiment=mnist_main          # the README's main job (a sweep)

After every job one summary line is printed; after a sweep, one table of all its runs and the
teachers they used. Every failure of a run, or of a job of a sweep, is one line (``error: ...``,
``[job failed] <overrides>: ...``) and a ``failed.txt`` in the job's Hydra folder; a sweep goes on
with its other jobs and ends with its summary. The project's own errors (bad config, data or
artifact; a folder that cannot be written; a failed training) exit with status 2, any other
exception with status 1, its traceback in ``failed.txt``; ``HYDRA_FULL_ERROR=1`` or
``BIASKD_VERBOSE=1`` shows the traceback instead.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from biaskd import PROJECT_ROOT
from biaskd.errors import ArtifactWarning, BiaskdError
from biaskd.record.sweep import FAILURE_FILE, failure_is_bug  # in a failed job's Hydra output dir: what failed

log = logging.getLogger("biaskd")

#: exit status of a run or sweep stopped by one of the project's own errors
ERROR_EXIT = 2


def describe(exc: BaseException) -> str:
    """One line a person reads: ``ConfigError: config key 'x' must be ...`` (a message of several
    lines, as some libraries write, joined into one)."""
    text = re.sub(r"\s*\n\s*", " ", str(exc).strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

CONF_DIR = str(PROJECT_ROOT / "conf")


@dataclass
class JobFailure:
    """What a job returns when an exception stopped it (the error is reported once, in one line,
    by :class:`SummaryCallback`, instead of as a traceback). ``bug``: not one of the project's own
    errors (its traceback is in the job's ``failed.txt``)."""

    message: str
    bug: bool = False


#: failed: jobs that failed; bugs: of those, the ones stopped by an exception that is not the
#: project's own; damaged: run dirs a sweep's summary found damaged
_state: dict[str, Any] = {"failed": 0, "bugs": 0, "started": False, "damaged": 0}


class SummaryCallback(Callback):
    """Prints one line per finished job (``[job failed] ...`` for a failed one) and, in a sweep,
    how far it is (``[sweep] 3/12 jobs done · elapsed · about … left``); after a sweep, writes
    ``runs.txt`` into the sweep folder (:mod:`biaskd.record.sweep`) and, through ``summarize``,
    ``summary.csv`` and ``summary.md``, prints the accuracy table and says how many jobs failed.

    ``summarize``: the dotted name of ``f(sweep_dir, failed=n) -> (summary.md path, table text) |
    None`` that writes the sweep's summaries (and ``runs.txt``); the config names
    :func:`analysis.sweep_summary.write_summary`. Given by name, so training code does not
    import the analysis; without one, only ``runs.txt`` is written."""

    def __init__(self, summarize: str | None = None) -> None:
        self.runs: list[Any] = []
        self.job_started = time.time()
        self.summarize = summarize

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_folders(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_folders(config, "hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from biaskd.record import sweep
        from biaskd.record.summary import summary_line
        from biaskd.run import distributed

        if not distributed.is_main():
            return  # one job, however many processes train it: rank 0 reports it
        if job_return.status != JobStatus.COMPLETED or job_return.return_value is None:
            return  # a bug's exception: Hydra/main() show its traceback
        result = job_return.return_value
        objective = ""
        if isinstance(result, float):  # a search's objective (optimized_metric): the run is kept aside
            result, objective = _state.pop("run"), f" · {config.optimized_metric}={result:.4f}"
        multirun = config.hydra.mode.name == "MULTIRUN"
        if isinstance(result, JobFailure):
            _state["failed"] += 1
            _state["bugs"] += result.bug
            if multirun:
                line = f"[job failed] {' '.join(job_return.overrides)}: {result.message}"
                print(line, file=sys.stderr, flush=True)
                _to_job_log(line, logging.ERROR)
            else:
                print(f"error: {result.message}", file=sys.stderr, flush=True)
        else:
            self.runs.append(result)
            sweep.record_job(config.hydra.runtime.output_dir, result.path)
            with _damage_reported("the job's summary line"):
                line = summary_line(result, since=self.job_started) + objective
                print(line, flush=True)
                _to_job_log(line)
        if multirun:
            line = sweep.progress_line(config.hydra.sweep.dir)
            if line:
                print(line, file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from biaskd.record import sweep
        from biaskd.run import distributed

        if not distributed.is_main():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob(f"*/{FAILURE_FILE}")) if sweep_dir.is_dir() else []
        written = None
        with _damage_reported("the sweep's summary"):
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
            _state["bugs"] = max(_state["bugs"], sum(failure_is_bug(f) for f in failed))
            print(f"{len(failed)} job(s) failed (the [job failed] lines above; also in "
                  f"{sweep_dir}/<job>/{FAILURE_FILE}); rerun the same command to retry them, completed jobs are kept",
                  file=sys.stderr, flush=True)

    def _summarize(self, sweep_dir: Path, failed: int) -> tuple[Path, str] | None:
        from biaskd.record import sweep

        if self.summarize:
            from hydra.utils import get_method

            return get_method(self.summarize)(sweep_dir, failed=failed)
        runs = sweep.sweep_runs(sweep_dir)
        if runs:
            sweep.write_runs_file(sweep_dir, runs)
        return None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        from biaskd.record.summary import format_table, summary_table, teacher_table

        if self.runs:
            with _damage_reported("the summary table"):
                print("\n" + format_table(summary_table(self.runs)), flush=True)
                measures = teacher_table(self.runs)
                if len(measures):
                    print("\nagreement with the teacher per eval split, mean JS divergence, probe CKA:\n"
                          + format_table(measures), flush=True)


@contextlib.contextmanager
def _damage_reported(what: str):
    """A damaged run dir met while ``what`` is made (a reader's :class:`ArtifactWarning`, or one of
    the project's errors) is said in one line, once per run dir, and makes the command's exit
    status 2; other warnings pass through as they were."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except BiaskdError as exc:
            _state["damaged"] += 1
            print(f"error: {what} not written: {' '.join(describe(exc).split())}", file=sys.stderr, flush=True)
    said = set()
    for w in caught:
        if not isinstance(w.message, ArtifactWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif w.message.path.resolve() not in said:
            said.add(w.message.path.resolve())
            _state["damaged"] += 1
            print(f"error: {what} left out a damaged run: {' '.join(str(w.message).split())}", file=sys.stderr,
                  flush=True)


def _check_output_folders(config: DictConfig, hydra_dir_key: str) -> None:
    """Before Hydra makes its output folder and launches a job: can ``runs_dir`` (and Hydra's
    folder, where it is elsewhere) be written? If not, the one line and exit status 2, nothing
    launched (Hydra would turn a callback's exception into a warning and go on)."""
    from biaskd.errors import StorageError
    from biaskd.run.preflight import check_writable

    runs_dir = Path(str(config.runs_dir)).resolve()
    hydra_dir = Path(str(OmegaConf.select(config, hydra_dir_key))).resolve()
    try:
        check_writable(runs_dir)
        if not hydra_dir.is_relative_to(runs_dir):
            check_writable(hydra_dir, hydra_dir_key)
    except StorageError as exc:
        print(f"error: {describe(exc)}", file=sys.stderr, flush=True)
        sys.exit(ERROR_EXIT)


def _added_keys(cfg: DictConfig) -> dict[str, str]:
    """The keys this job's command line added to the config (``+key=value``, and ``++key=value``
    for a key the config composed without it does not have), each with its override."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hc = HydraConfig.get()
    choices = set(hc.runtime.choices)
    lines = list(hc.overrides.task)
    added: dict[str, str] = {}
    forced: dict[str, str] = {}
    for o in OverridesParser.create().parse_overrides(lines):
        if o.package is not None or o.key_or_group in choices:
            continue  # a config group (+experiment=..., +model@x=...), not a key
        if o.is_add():
            added[o.key_or_group] = o.input_line
        elif o.is_force_add():
            forced[o.key_or_group] = o.input_line
    if forced:
        base = _compose_without(lines, set(forced.values()), list(hc.overrides.hydra))
        for key, line in forced.items():
            if base is not None and OmegaConf.select(base, key, default=_ABSENT) is _ABSENT:
                added[key] = line
    return added


_ABSENT = object()


def _compose_without(lines: list[str], left_out: set[str], hydra_overrides: list[str]) -> DictConfig | None:
    """The config this job's command line composes without the overrides ``left_out``, or None
    when it cannot be composed again here."""
    from hydra import compose

    try:
        return compose(config_name="config", overrides=[*hydra_overrides, *(o for o in lines if o not in left_out)])
    except Exception:  # not composable outside the sweep that made it: the keys are not checked
        log.debug("could not compose the config without %s", sorted(left_out), exc_info=True)
        return None


def _failure(exc: Exception) -> JobFailure:
    """The one line an exception that stopped a job prints, with ``failed.txt`` written in the
    job's Hydra folder: that line, and for an exception that is not the project's own, its
    traceback (the line says where it is)."""
    from hydra.core.hydra_config import HydraConfig

    from biaskd.run.preflight import storage_error

    exc = storage_error(exc) or exc
    bug = not isinstance(exc, BiaskdError)
    out = Path(HydraConfig.get().runtime.output_dir)
    report = out / FAILURE_FILE
    line = describe(exc)
    text = line + "\n"
    if bug:
        line += f" (not one of biaskd's own errors; its traceback is in {report}, BIASKD_VERBOSE=1 shows it)"
        text = line + "\n\n" + "".join(traceback.format_exception(exc))
    from biaskd.run import distributed

    try:
        if distributed.is_main():  # the other processes of a job raise rank 0's error
            out.mkdir(parents=True, exist_ok=True)
            report.write_text(text)
    except OSError:  # the folder cannot be written (the error may be just that): the line is still printed
        if bug:
            line = f"{describe(exc)} (not one of biaskd's own errors; BIASKD_VERBOSE=1 shows its traceback)"
    return JobFailure(line, bug)


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


def threads_per_job(threads: int, n_jobs: int | None, cores: int) -> int:
    """Torch threads for one job: ``threads`` if set (> 0); with ``threads=0`` ("all cores") and a
    launcher running ``n_jobs`` jobs at once (joblib's -1: one per core), the cores shared among
    them, so that parallel jobs do not oversubscribe the machine; else 0 (all cores)."""
    if threads > 0 or n_jobs is None or n_jobs == 1:
        return threads
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


def _share_the_cores(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs") if hc.mode == RunMode.MULTIRUN else None
    threads = threads_per_job(int(cfg.get("threads") or 0), n_jobs, os.cpu_count() or 1)
    if threads != int(cfg.get("threads") or 0):
        cfg.threads = threads  # not part of a run's identity
        log.info(f"threads={threads}: {n_jobs} parallel jobs share {os.cpu_count()} cores")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _app(cfg: DictConfig):
    _state["started"] = True
    try:
        from biaskd.config import check, check_added_keys

        _refuse_a_sweep_without_m()
        _share_the_cores(cfg)
        check_added_keys(cfg, _added_keys(cfg))  # a key the command line added that nothing reads
        check(cfg)  # a bad config speaks before the training stack is imported
        from biaskd.run.train import train

        run = train(cfg)
        if run is None:  # trainer.fast_dev_run: nothing was kept (its line is in the log)
            return None
        if cfg.get("optimized_metric"):  # a search: the sweeper gets a number, the callback the run
            from biaskd.record.optimized_metric import last_logged

            _state["run"] = run
            return last_logged(run.path, str(cfg.optimized_metric))
        return run
    except Exception as exc:  # every failure of a job is one line; KeyboardInterrupt stops the sweep
        if _verbose():
            raise
        return _failure(exc)


def _verbose() -> bool:
    return os.environ.get("BIASKD_VERBOSE") == "1" or os.environ.get("BIASKD_USER_FULL_ERROR") == "1"


def unknown_option(exc: BaseException) -> str | None:
    """One line for an option a config group does not have (``model=mlpp``): the group, the
    option, and the closest options it has (all of them when none is close); for
    ``distill=<objective>`` (as in ``distill=hints``, from when the distill group held the
    objectives too) the spelling now. None for other errors."""
    import difflib

    from hydra.errors import MissingConfigException

    from biaskd.objectives import OBJECTIVES

    if not isinstance(exc, MissingConfigException) or not exc.options or not exc.missing_cfg_file:
        return None
    group, _, name = str(exc.missing_cfg_file).rpartition("/")
    if group == "distill" and name in OBJECTIVES:
        return (f"distill={name}: the mode (distill=none|self|cross|online) and the objective are two config "
                f"groups; write distill=cross objective={name} (or distill=self objective={name})")
    options = sorted(map(str, exc.options))
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}?" if close else f"its options: {', '.join(options)}"
    return f"config group {group!r} has no option {name!r} ({group}={name}); {hint}"


def main() -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the Optuna sweeper's storage layer: plugin lines
    os.environ.setdefault("BIASKD_USER_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", "0"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # exceptions reach main() instead of Hydra's traceback printer
    try:
        _app()
    except Exception as exc:
        from hydra.errors import CompactHydraException

        from biaskd.run.preflight import storage_error

        if _state["failed"] and not _verbose():  # a sweeper (e.g. Optuna's) gave up on failed jobs, or a full disk
            print(f"error: the sweep stopped after {_state['failed']} failed job(s) (the [job failed] lines above): "
                  f"{describe(storage_error(exc) or exc)}", file=sys.stderr)
            sys.exit(ERROR_EXIT)
        own = storage_error(exc)  # e.g. Hydra could not make its output folder
        if own is not None and not _verbose():
            print(f"error: {describe(own)}", file=sys.stderr)
            sys.exit(ERROR_EXIT)
        if _verbose() or (_state["started"] and not isinstance(exc, CompactHydraException)):
            raise  # a bug: its traceback
        from biaskd.extras import hint_for

        # the command line could not be composed into a config (unknown key, bad override, a launcher
        # whose optional package is missing)
        if unknown_option(exc):
            print(f"error: {unknown_option(exc)}", file=sys.stderr)
            sys.exit(ERROR_EXIT)
        if hint_for(exc):
            print(f"error: {hint_for(exc)}", file=sys.stderr)
        elif "srun" in str(exc):  # the SLURM launcher off a cluster
            print("error: hydra/launcher=slurm submits SLURM jobs, but SLURM is not here (no `srun`); run the command "
                  "on the cluster, or use hydra/launcher=basic or parallel", file=sys.stderr)
        elif unknown_option(exc):
            print(f"error: {unknown_option(exc)}", file=sys.stderr)
        elif isinstance(exc, CompactHydraException):
            print(f"error: {exc}" + (f"\n{exc.__cause__}" if exc.__cause__ else ""), file=sys.stderr)
        else:
            print(f"error: cannot apply the command line's overrides ({type(exc).__name__}: {exc}); a list in the "
                  "config is indexed by position, e.g. task.ood.0.severity=4", file=sys.stderr)
        sys.exit(1)
    if _state["failed"]:
        sys.exit(1 if _state["bugs"] else ERROR_EXIT)
    if _state["damaged"]:
        sys.exit(ERROR_EXIT)


if __name__ == "__main__":  # python -m biaskd.tools.cli: run the imported module, which Hydra's callback shares
    from biaskd.tools.cli import main as _main

    sys.exit(_main())
