"""The training driver: one config in, one complete run dir out.

``train(cfg)`` tells the story of a run: validate, build the data, get the teacher, build the
module the run's recipe (:mod:`biaskd.run.recipes`) asks for, fit, evaluate, write. A complete run dir
is returned as it is; an interrupted one resumes from its last checkpoint (:mod:`biaskd.run.trust`).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar
from omegaconf import DictConfig, OmegaConf

from biaskd import config as config_mod
from biaskd.data import transfer as transfer_mod
from biaskd.data.base import Split, StepGroups, TensorBatches, is_lm
from biaskd.data.build import absolute, build_data
from biaskd.data.datamodule import TaskData
from biaskd.errors import ConfigError, TrainingError
from biaskd.models import build_model, check_model
from biaskd.modes import mode_of
from biaskd.modules.callbacks import (AtomicCheckpointIO, FiniteLossGuard, LogInCheckpoint, RunLogger,
                                     TrainingPathRecorder, batched_features)
from biaskd.modules.lm import verb_prefix
from biaskd.quiet import quiet_libraries
from biaskd.record import artifacts, reproduce, schema
from biaskd.record.artifacts import RunDir
from biaskd.record.identity import run_dir_for, run_meta
from biaskd.record.sweep import duration
from biaskd.run import distributed, preflight, versus_teacher
from biaskd.run.predict import evaluate, transfer_signal
from biaskd.run.rebuild import load_model
from biaskd.run.recipes import Parts, Recipe, recipe_for
from biaskd.run.teacher import Teacher
from biaskd.run.trust import checked_complete, keep_csv_log, resume_checkpoint

log = logging.getLogger("biaskd")


def train(cfg: DictConfig, data: TaskData | None = None) -> RunDir | None:
    """Train the run ``cfg`` describes (if not already complete) and return its run dir.

    A run is a function of ``cfg`` alone: ``data`` only saves rebuilding splits that ``cfg``'s
    task config would build (batch order and size always come from ``cfg``). With several
    processes (``trainer=ddp``) every one of them calls this; :mod:`biaskd.run.distributed` makes
    them one job.

    With ``trainer.fast_dev_run`` (Lightning's check of the whole loop on a batch or a few), the
    run and any teacher it needs are made in a scratch folder that is removed afterwards: such a
    run is never complete where real runs live. Returns None then."""
    # everything that can be checked before a run dir (or its lock) exists is, in this order:
    # the config, the Trainer's settings (the teacher's too), the data, the model, the runs folder
    config_mod.check(cfg)
    if OmegaConf.select(cfg, "trainer.fast_dev_run", default=False) and not _in_scratch(cfg):
        return _fast_dev_run(cfg, data)
    cfg = config_mod.canonical(cfg)
    check_trainers(cfg)
    repair = bool(cfg.get("repair", False))
    distributed.launch(cfg.trainer)  # the other processes start here, if the trainer asks for them
    set_threads(int(cfg.get("threads", 0) or 0))
    # a config from before the key (a run being reproduced) ran with subnormals kept; the process's
    # own setting is back when the run returns or fails (a notebook or test that trains keeps its mode)
    with reproduce.subnormals_flushed(bool(cfg.get("flush_denormal", False))):
        return _build_and_train(cfg, data, repair)


def _build_and_train(cfg: DictConfig, data: TaskData | None, repair: bool) -> RunDir:
    start = time.perf_counter()
    data = data or build_data(cfg)
    data_s = time.perf_counter() - start
    preflight.check_classes(data, str(cfg.task.name))
    run = run_dir_for(cfg, data)
    if distributed.on_main(checked_complete, run, repair):
        log.info("complete, skipping: %s", run.path)
        return run

    check_model(cfg.model, data)  # fail before any (teacher) training
    recipe = recipe_for(cfg, data)
    recipe.check(cfg, data)
    spec = transfer_mod.spec_of(cfg)
    transfer_set = transfer_mod.build(spec, data)  # before any (teacher) training: bad sources fail fast
    preflight.check_writable(absolute(cfg.runs_dir))
    try:
        with distributed.run_lock(run):
            if distributed.on_main(checked_complete, run, repair):  # another job finished it while we waited
                log.info("complete, skipping: %s", run.path)
                return run
            return _train_run(cfg, data, run, recipe, spec, transfer_set, repair, phases={"data": data_s})
    except OSError as exc:  # a full disk or a folder that became unwritable: one line naming the run
        error = preflight.storage_error(exc, run.path)
        if error is None:
            raise
        raise error from exc


def check_trainers(cfg: DictConfig) -> None:
    """The ``trainer`` config of the run, and of the teacher it trains first, as lightning.Trainer
    would take it (:func:`biaskd.run.preflight.check_trainer`)."""
    preflight.check_trainer(OmegaConf.to_container(cfg.trainer, resolve=True))
    if mode_of(cfg).trained_teacher:
        tcfg = config_mod.teacher_config(cfg)
        if OmegaConf.to_container(tcfg.trainer, resolve=True) != OmegaConf.to_container(cfg.trainer, resolve=True):
            try:
                preflight.check_trainer(OmegaConf.to_container(tcfg.trainer, resolve=True))
            except ConfigError as exc:
                raise config_mod.in_teacher_config(cfg, exc) from None


def _train_run(cfg: DictConfig, data: TaskData, run: RunDir, recipe: Recipe, spec, transfer_set,
               repair: bool, phases: dict[str, float]) -> RunDir:
    """Train ``run`` (holding its lock): resume or start, fit, evaluate, write, mark complete.
    ``phases`` collects where the wall time went (seconds; metrics.json ``train.phases_s``)."""
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - clock
        clock = now

    ckpt = distributed.on_main(resume_checkpoint, run, repair)
    teacher = OBTAIN_TEACHER[recipe.teacher](cfg, data)
    lap("teacher")
    distilled = mode_of(cfg).distilled
    fit = transfer_mod.fit_split(data.train, transfer_set, spec, distilled=distilled)
    # what rank 0 writes into the teacher's cache (generated sentences, logits), the others read
    fit = distributed.main_first(recipe.training_split, cfg, fit, teacher)
    model, init_from = build_student(cfg, data)
    # optional torch.compile of the student's step; `model` stays the plain module that is saved
    net = torch.compile(model) if cfg.train.get("compile", False) else model
    module = distributed.main_first(recipe.module, Parts(cfg, data, model, net, teacher, fit, optimizer_options(cfg)))

    teacher_run = teacher.run if teacher else None
    meta = run_meta(cfg, data, run, teacher_run, config_mod.run_hash(cfg, data.fingerprint()), init_from)
    meta["transfer"] = {**transfer_mod.record(transfer_set, spec, distilled), "n_fit": len(fit)}
    meta.update(distributed.record(int(cfg.task.batch_size)))
    meta = distributed.on_main(start_run_dir, cfg, run, meta, transfer_set)

    # batch order and size from this run's own config (never from a data object shared with another run);
    # with several processes, each steps on its part of every batch of batch_size x processes
    train_batches = TensorBatches(fit, int(cfg.task.batch_size), shuffle=True, seed=int(cfg.seed),
                                  lengths=data.lengths(fit), shard=distributed.shard())
    per_call = int(cfg.train.get("steps_per_call", 1) or 1)
    # what trainer.fit iterates (the module re-seeds it per epoch); with steps_per_call > 1, lists
    # of that many batches, one optimizer step each: the same updates, Lightning's per-call cost amortised
    data.fit_on(StepGroups(train_batches, per_call) if per_call > 1 else train_batches)
    probe = verb_prefix(data.probe) if is_lm(data) else data.probe  # LM: features before the verb
    steps = default_feature_steps(len(train_batches) * int(cfg.trainer.max_epochs), cfg.train.get("feature_steps"))
    loggers = _loggers(cfg, run, meta)
    trainer = make_trainer(OmegaConf.to_container(cfg.trainer, resolve=True), run, loggers, probe, steps,
                           callbacks=configured_callbacks(cfg), steps_per_call=per_call)
    lap("setup")
    wall = fit_run(trainer, module, data, run, ckpt, loggers[0])
    lap("fit")
    # the processes hold the same weights: rank 0 evaluates every split whole and writes the run
    distributed.on_main(record_run, cfg, data, run, recipe, model, teacher, transfer_set, probe, trainer, wall,
                        phases, lap)
    return run


def record_run(cfg: DictConfig, data: TaskData, run: RunDir, recipe: Recipe, model: torch.nn.Module, teacher,
               transfer_set, probe: Split, trainer: L.Trainer, wall: float, phases: dict, lap) -> None:
    """After the fit: final weights, outputs and metrics of every eval split, probe features, the
    comparison with the teacher; the loggers closed, the run marked complete."""
    teacher_run = teacher.run if teacher else None
    eval_batch = int(cfg.task.get("eval_batch_size", 1024))
    log.info("evaluating on %d eval split(s) (%s: %s examples)", len(data.evals), ", ".join(data.evals),
             f"{sum(len(s) for s in data.evals.values()):,}")
    run.write_weights("final", model.state_dict())
    splits = evaluate(model, data, run, eval_batch)
    lap("evaluate")
    feats = batched_features(model, probe.x)
    run.write_features("final", feats, probe.ids, trainer.global_step)
    lap("features")
    metrics = {
        "splits": splits,
        "train": {"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch), "wall_time_s": wall,
                  "phases_s": phases},
    }
    if recipe.records_teacher_signal and not is_lm(data):  # what the soft targets carried beyond the labels
        metrics["teacher_signal"] = transfer_signal(teacher.model, data.train, transfer_set,
                                                    float(cfg.distill.temperature))
    # agreement, JS divergence and probe CKA with the teacher, for metrics.json and the dashboard
    comparison = versus_teacher.compare(cfg, data, run, probe, feats, teacher_run, teacher.model if teacher else None,
                                         eval_batch)
    if comparison is not None:
        comparison.add_to(metrics)
    lap("teacher_measures")
    log.info("evaluated in %s (eval splits %s, probe features %s, teacher measures %s; trained in %s)",
             duration(phases["evaluate"] + phases["features"] + phases["teacher_measures"]),
             duration(phases["evaluate"]), duration(phases["features"]), duration(phases["teacher_measures"]),
             duration(wall))
    run.write_metrics(metrics)
    finish_loggers(cfg, trainer, run, splits, data, comparison)
    run.mark_complete(wall_time_s=wall)


# -- fast_dev_run: the whole driver on a batch, nothing kept ----------------------------------------
_SCRATCH: set[str] = set()  # the scratch runs folders of the fast_dev_runs in progress


def _in_scratch(cfg: DictConfig) -> bool:
    return str(cfg.get("runs_dir")) in _SCRATCH


def _fast_dev_run(cfg: DictConfig, data: TaskData | None) -> None:
    """Train, evaluate and measure ``cfg``'s run (and its teacher) with Lightning's fast_dev_run
    in a scratch runs folder, log the run's line, and remove the folder."""
    from biaskd.record.summary import summary_line

    with tempfile.TemporaryDirectory(prefix="biaskd-fast-dev-run-") as scratch:
        cfg = cfg.copy()
        cfg.runs_dir = scratch
        _SCRATCH.add(scratch)
        try:
            run = train(cfg, data)
            log.info("fast_dev_run: %s; nothing kept (the run and its teacher were made in a scratch folder, "
                     "now removed)", summary_line(run).split(" -> ")[0])
        finally:
            _SCRATCH.discard(scratch)
    return None


# -- teachers -------------------------------------------------------------------------------------
def ensure_teacher(cfg: DictConfig, data: TaskData) -> RunDir:
    """The complete run dir of the teacher ``cfg`` asks for, training it first if needed.

    The teacher is trained exactly as its own ``config.yaml`` says (:func:`train` takes batch
    order and size from the config, not from the student's data object); the student's splits
    are reused only when the teacher's task config is the student's. Parallel students wait on
    the teacher run's lock instead of training it twice.
    """
    tcfg = config_mod.teacher_config(cfg)
    tdata = data if _task_spec(tcfg) == _task_spec(cfg) else build_data(tcfg)
    run = run_dir_for(tcfg, tdata)
    if distributed.on_main(lambda: run.is_complete and not run.verify()):
        log.info("teacher found: %s", run.path)
        return run
    log.info("training teacher: %s", run.path)
    return train(tcfg, data=tdata)


def _task_spec(cfg: DictConfig) -> dict:
    """What builds a run's data: its task config without the batch sizes (which only batch it)."""
    spec = OmegaConf.to_container(cfg.task, resolve=True)
    return {k: v for k, v in spec.items() if k not in ("batch_size", "eval_batch_size")}


def trained_teacher(cfg: DictConfig, data: TaskData) -> Teacher:
    run = ensure_teacher(cfg, data)
    return Teacher(load_model(run, data), run)


def online_teacher(cfg: DictConfig, data: TaskData) -> Teacher:
    """A fresh teacher to train alongside the student, initialised from its own seed whatever ran
    before in this process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed) + int(cfg.teacher.get("seed_offset", 0) or 0))
        return Teacher(build_model(cfg.teacher.model, data))


def no_teacher(cfg: DictConfig, data: TaskData) -> None:
    versus_teacher.prepare(cfg, data, ensure_teacher)  # teacher.compare=true: the teacher to compare with
    return None


#: a recipe's ``teacher`` (the mode's :attr:`~biaskd.modes.Mode.teacher`) -> how the driver obtains the Teacher
OBTAIN_TEACHER = {"trained": trained_teacher, "online": online_teacher, None: no_teacher}


# -- the student --------------------------------------------------------------------------------------
def build_student(cfg: DictConfig, data: TaskData) -> tuple[torch.nn.Module, RunDir | None]:
    """The student model, initialised from the run's seed or from ``train.init_from``'s weights."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = build_model(cfg.model, data)
    init_from = init_source(cfg)
    if init_from is not None:  # continue training from another run's final weights (e.g. drift)
        try:
            model.load_state_dict(init_from.state_dict())
        except RuntimeError as exc:
            raise ConfigError(f"config key 'train.init_from': {init_from.path} does not fit model "
                              f"{cfg.model.name!r} ({str(exc).splitlines()[0]})") from None
    return model, init_from


def init_source(cfg: DictConfig) -> RunDir | None:
    """The complete run whose final weights initialise this one (``train.init_from``), or None."""
    path = cfg.train.get("init_from")
    if not path:
        return None
    return RunDir(absolute(path)).require_complete()


def optimizer_options(cfg: DictConfig) -> dict:
    return dict(
        optimizer=cfg.train.optimizer,
        lr=float(cfg.train.lr),
        weight_decay=float(cfg.train.weight_decay),
        lr_schedule=cfg.train.get("lr_schedule", "constant"),
        grad_clip=cfg.train.get("grad_clip"),
    )


def set_threads(threads: int) -> None:
    n = threads if threads and threads > 0 else (distributed.cpu_threads() or os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# -- the run dir, the Trainer, the fit ------------------------------------------------------------------
def start_run_dir(cfg: DictConfig, run: RunDir, meta: dict, transfer_set: Split | None) -> dict:
    """Write what a run records before it trains (config, drawn transfer inputs, meta.json; a
    resumed run keeps its first meta.json) and return the meta in effect."""
    run.path.mkdir(parents=True, exist_ok=True)
    run.reset_outcome()
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    if transfer_set is not None:  # which inputs were drawn: rebuild from meta["transfer"] to check
        artifacts.save_npz(run / schema.TRANSFER, ids=transfer_set.ids, labels=transfer_set.y,
                           **{k: np.asarray(v) for k, v in transfer_set.meta.items()})
    if (run / schema.META).exists():
        return run.meta
    run.write_meta(meta)
    return meta


def default_feature_steps(total_steps: int, configured: list[int] | None) -> list[int]:
    if configured:
        return [int(s) for s in configured if int(s) <= total_steps]
    steps = {0, total_steps}
    s = 1
    while s < total_steps:
        steps.add(s)
        s *= 2
    return sorted(steps)


def _loggers(cfg: DictConfig, run: RunDir, meta: dict) -> list:
    """The CSV log (in code: resuming keeps its rows, a search reads its last value), W&B (in code:
    its group, job type and tags come from the run's meta.json) and every ``logger.<name>`` entry
    with a ``_target_`` (any Lightning logger; ``save_dir`` defaults to the run dir)."""
    loggers: list = [RunLogger(run)]  # logs/metrics.csv, written atomically
    lcfg = cfg.get("logger") or {}
    if lcfg.get("wandb", {}).get("enabled", False):
        from biaskd.wandb_logging import make_wandb_logger

        loggers.append(make_wandb_logger(cfg, run, meta))
    for node in lcfg.values():
        if OmegaConf.is_dict(node) and "_target_" in node:
            from hydra.utils import instantiate

            loggers.append(instantiate(node, **({} if "save_dir" in node else {"save_dir": str(run.path)})))
    return loggers


def configured_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks a run's config asks for, each instantiated from its ``_target_``: those under
    ``callbacks`` (they only watch a run: a progress bar, monitors; conf/callbacks/) and those under
    ``train.callbacks`` (they change what it trains, e.g. EarlyStopping: part of the run's identity).
    An entry set to null is left out."""
    from hydra.utils import instantiate

    found = []
    for node in (cfg.get("callbacks"), OmegaConf.select(cfg, "train.callbacks")):
        for name, spec in (node or {}).items():
            if spec is None:
                continue
            if not OmegaConf.is_dict(spec) or "_target_" not in spec:
                raise ConfigError(f"config key 'callbacks.{name}' must be a callback config with a _target_, "
                                  f"got {spec!r}")
            found.append(instantiate(spec))
    return found


def make_trainer(tcfg: dict, run: RunDir, loggers: list | bool, probe: Split, feature_steps: list[int],
                 callbacks: list[L.Callback] | None = None, steps_per_call: int = 1) -> L.Trainer:
    """The Trainer of a run: ``tcfg`` (the ``trainer`` config), the configured ``callbacks``
    (:func:`configured_callbacks`; a progress bar among them is left out when
    ``enable_progress_bar`` is false) and the callbacks a run needs to be correct, which stay in
    code: the epoch checkpoint it resumes from, the training-path recorder (it writes into the
    run dir) and the finite-loss guard (it marks the run FAILED; Lightning's ``detect_anomaly``
    is not the same: it looks for NaN in the backward pass only, slows every step, and raises a
    RuntimeError the driver cannot tell from a bug). ``steps_per_call``: optimizer steps per
    training_step; Lightning counts calls, so ``log_every_n_steps`` (in optimizer steps) is
    divided by it."""
    quiet_libraries()
    if steps_per_call > 1 and tcfg.get("log_every_n_steps"):
        tcfg = {**tcfg, "log_every_n_steps": max(1, round(int(tcfg["log_every_n_steps"]) / steps_per_call))}
    own: list[L.Callback] = [
        ModelCheckpoint(dirpath=str(run / "checkpoints"), filename="last", save_last=False,
                        save_top_k=1, every_n_epochs=1, enable_version_counter=False),
        TrainingPathRecorder(run, probe, feature_steps),
        # on a GPU, checking every step would make every step wait for the device
        FiniteLossGuard(every=int(tcfg.get("log_every_n_steps", 1) or 1) if tcfg.get("accelerator") != "cpu" else 1),
        LogInCheckpoint(),  # the CSV log as logged so far, for a resume
    ]
    extra = list(callbacks or [])
    if not tcfg.get("enable_progress_bar", True):
        extra = [cb for cb in extra if not isinstance(cb, ProgressBar)]
    trainer = L.Trainer(**tcfg, default_root_dir=str(run.path), logger=loggers, callbacks=own + extra,
                        plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0)
    if tcfg.get("deterministic"):
        # deterministic algorithms, without also filling every new tensor with NaN (a debugging aid
        # for reads of uninitialised memory that torch turns on with them; ~4% of the SVA
        # Transformer's CPU step, and no op we use reads memory it has not written)
        torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def fit_run(trainer: L.Trainer, module: L.LightningModule, data: TaskData, run: RunDir, ckpt, csv_logger) -> float:
    """``trainer.fit`` from the start or from ``ckpt`` (the CSV log's earlier rows kept); a
    training error marks the run failed. Returns the wall time in seconds."""
    start = time.perf_counter()
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
        if distributed.is_main():
            keep_csv_log(csv_logger, run, ckpt)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    except TrainingError as exc:
        if distributed.is_main():
            run.mark_failed(str(exc))
        raise
    wall = time.perf_counter() - start
    if trainer.interrupted:
        raise KeyboardInterrupt(f"training of {run.path} was interrupted; rerun the same command to resume")
    return wall


def finish_loggers(cfg: DictConfig, trainer: L.Trainer, run: RunDir, splits: dict, data: TaskData,
                   comparison) -> None:
    """The final metrics (and W&B prediction tables) to every logger; one W&B run per biaskd run."""
    if (cfg.get("logger") or {}).get("wandb", {}).get("log_predictions", False):
        from biaskd.wandb_logging import log_predictions

        log_predictions(trainer.loggers, run, list(splits), data=data, comparison=comparison,
                        max_rows=int(cfg.logger.wandb.get("prediction_rows", 500)))
    versus_teacher.log_to_wandb(trainer.loggers, comparison)
    for lg in trainer.loggers:
        if hasattr(lg, "log_metrics"):
            lg.log_metrics({**{f"{s}/{k}": v for s, m in splits.items() for k, v in m.items() if isinstance(v, float)},
                            **(comparison.scalars() if comparison else {})}, step=trainer.global_step)
        lg.finalize("success")
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.finish()  # one W&B run per biaskd run (teachers trained in-process too)
