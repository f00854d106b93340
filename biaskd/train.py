"""The training driver: one config in, one complete run dir out.

``train(cfg)`` validates the config, builds the data and model, finds (or trains, under a file
lock) the teacher a student needs, trains with Lightning, evaluates every eval split and writes
the run dir (see :mod:`biaskd.artifacts`). A run dir that is already complete is returned as it
is; an interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import hydra.utils
import lightning as L
import numpy as np
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from biaskd import artifacts, config as config_mod, teacher_metrics
from biaskd.artifacts import RunDir
from biaskd.data import transfer as transfer_mod
from biaskd.data.base import PAD_ID, Split, TensorBatches
from biaskd.data.datamodule import TaskData
from biaskd.errors import ArtifactError, ConfigError, TrainingError
from biaskd.metrics import split_metrics, teacher_signal
from biaskd.models import build_model, check_model
from biaskd.modules.callbacks import (AtomicCheckpointIO, FiniteLossGuard, ThrottledProgressBar, TrainingPathRecorder,
                                     batched_features)
from biaskd.modules.classifier import ClassifierModule
from biaskd.modules.distill import DistillModule
from biaskd.modules.lm import check_lm_config, is_lm, lm_module, lm_scores, verb_prefix
from biaskd.modules.seqkd import is_sequence_level, sequence_level_split
from biaskd.quiet import quiet_libraries
from biaskd.objectives import Outputs, build_objective, features_and_logits, objective_class, objective_options

log = logging.getLogger("biaskd")

_TASK_META_KEYS = ("name", "kd")


def absolute(path: str | os.PathLike) -> Path:
    """A config path relative to where the command was launched (Hydra-aware)."""
    try:
        return Path(hydra.utils.to_absolute_path(str(path)))
    except ValueError:  # Hydra not initialised (library use)
        return Path(path).resolve()


def build_data(cfg: DictConfig, seed: int | None = None) -> TaskData:
    spec = OmegaConf.to_container(cfg.task, resolve=True)
    for key in _TASK_META_KEYS:
        spec.pop(key, None)
    if spec.get("data_dir") is not None:
        spec["data_dir"] = str(absolute(spec["data_dir"]))
    spec["seed"] = int(cfg.seed if seed is None else seed)
    try:
        data = hydra.utils.instantiate(spec, _convert_="all")
    except Exception as exc:
        raise ConfigError(f"cannot build task {cfg.task.name!r}: {exc}") from exc
    data.setup()
    return data


def set_threads(threads: int) -> None:
    n = threads if threads and threads > 0 else (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _versions() -> dict[str, str]:
    import lightning
    import torchmetrics

    import biaskd

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "numpy": np.__version__,
        "biaskd": biaskd.__version__,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_name(cfg: DictConfig, digest: str) -> str:
    mode = cfg.distill.mode
    role = cfg.get("role", "student")
    task = f"{cfg.task.name}_lm" if cfg.task.get("setup") == "lm" else cfg.task.name
    parts = [task, cfg.model.name]
    if role != "teacher":
        parts.append(mode)
        objective = cfg.distill.get("objective") or "kd"
        if mode != "none" and objective != "kd":
            parts.append(objective)
        if mode in ("cross", "online"):
            parts.append(f"from-{cfg.teacher.model.name}")
        transfer_part = transfer_mod.run_name_part(transfer_mod.spec_of(cfg))
        if transfer_part:
            parts.append(transfer_part)
    parts += [f"s{cfg.seed}", digest]
    return "-".join(str(p) for p in parts)


def run_dir_for(cfg: DictConfig, data: TaskData) -> RunDir:
    digest = config_mod.run_hash(cfg, data.fingerprint())
    root = absolute(cfg.runs_dir)
    folder = "teachers" if cfg.get("role", "student") == "teacher" else str(cfg.experiment_name)
    return RunDir(root / folder / run_name(cfg, digest))


# -- teachers ------------------------------------------------------------------------------------
def load_model(run: RunDir | str | Path, data: TaskData | None = None) -> torch.nn.Module:
    """Rebuild a complete run's final model from its config and ``model.pt``."""
    run = RunDir(run) if not isinstance(run, RunDir) else run
    run.require_complete()
    cfg = OmegaConf.load(run / "config.yaml")
    data = data or build_data(cfg)
    model = build_model(cfg.model, data)
    try:
        model.load_state_dict(run.state_dict("final"))
    except RuntimeError as exc:
        raise ArtifactError(f"{run / 'model.pt'}: does not fit model {cfg.model.name!r} ({exc})") from None
    return model.eval()


def _task_spec(cfg: DictConfig) -> dict:
    """What builds a run's data: its task config without the batch sizes (which only batch it)."""
    spec = OmegaConf.to_container(cfg.task, resolve=True)
    return {k: v for k, v in spec.items() if k not in ("batch_size", "eval_batch_size")}


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
    if run.is_complete and not run.verify():
        log.info("teacher found: %s", run.path)
        return run
    log.info("training teacher: %s", run.path)
    return train(tcfg, data=tdata)


@contextlib.contextmanager
def run_lock(run: RunDir):
    """One writer per run dir: a file lock beside it. A second process with the same run waits
    (saying so), then finds the run complete."""
    run.path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run.path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process training %s", run.path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def set_aside(run: RunDir, why: str) -> Path:
    """Move a bad run dir to ``.bad/`` beside it (hidden from analysis, nothing deleted)."""
    dest = run.path.parent / ".bad" / f"{run.path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run.path), str(dest))
    log.warning("%s; moved it to %s and training the run anew", why, dest)
    return dest


def checked_complete(run: RunDir, repair: bool) -> bool:
    """Whether ``run`` is complete and its files match its manifest. A complete run that fails
    verification raises ArtifactError naming the bad file(s), or with ``repair`` is set aside."""
    if not run.is_complete:
        return False
    problems = run.verify()
    if not problems:
        return True
    if repair:
        set_aside(run, f"{run.path} failed verification ({problems[0]})")
        return False
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ArtifactError(f"{problems[0]}{more}")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits in input order. Padded token inputs are scored in length-sorted batches, each
    trimmed to its longest member (same results, far less work on padding)."""
    model.eval()
    if len(x) == 0:
        return torch.empty(0)
    device = next(model.parameters()).device
    if x.dim() == 2 and not x.is_floating_point():
        lengths = (x != PAD_ID).sum(1)
        order = torch.argsort(lengths, stable=True)
        out = torch.empty(0)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx, : max(1, int(lengths[idx].max()))]
            z = model(xb.to(device)).float().cpu()
            if i == 0:
                out = torch.empty((len(x), *z.shape[1:]))
            out[idx] = z
        return out
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict_features_and_logits(model: torch.nn.Module, x: torch.Tensor,
                                batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    device = next(model.parameters()).device
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        f, z = features_and_logits(model, x[i : i + batch_size].to(device))
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    return (torch.cat(feats), torch.cat(logits)) if logits else (torch.empty(0), torch.empty(0))


def _cached_rows(path: Path, key: str, ids: torch.Tensor) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        cached = artifacts.load_npz(path)
    except ArtifactError as exc:  # derived data: computed again
        log.warning("teacher cache damaged, recomputing it: %s", exc)
        return None
    if key in cached and len(cached[key]) == len(ids) and np.array_equal(cached["ids"], ids.numpy()):
        return torch.from_numpy(cached[key])
    log.warning("teacher cache %s does not match the data; recomputing", path)
    return None


def teacher_cache(teacher_run: RunDir, teacher: torch.nn.Module, data: TaskData, name: str = "train",
                  features: bool = False, split=None) -> Outputs:
    """Teacher logits (and with ``features=True`` its ``features(x)``) on the training set (or
    on ``split``, e.g. training set + transfer inputs), computed once per (teacher, data) and
    stored in the teacher's run dir: ``NAME-FP.npz`` and ``NAME-features-FP.npz``. The file
    names carry the data fingerprint (and ``split``'s), so changed data (or a retrained teacher,
    which lives in a new dir) never reuses stale outputs."""
    fp = data.fingerprint()
    if split is None or split is data.train:
        split = data.train
    else:
        name, fp = "fit", config_mod.config_hash({"data": fp, "split": split.fingerprint()}, length=16)
    folder = teacher_run / "teacher_cache"
    paths = {"logits": folder / f"{name}-{fp}.npz"}
    if features:
        paths["features"] = folder / f"{name}-features-{fp}.npz"
    with FileLock(str(paths["logits"]) + ".lock"):
        found = {key: _cached_rows(path, key, split.ids) for key, path in paths.items()}
        missing = [key for key, value in found.items() if value is None]
        if missing:  # one teacher pass fills every missing file
            if "features" in missing:
                computed = dict(zip(("features", "logits"), predict_features_and_logits(teacher, split.x)))
            else:
                computed = {"logits": predict_logits(teacher, split.x)}
            for key in missing:
                found[key] = computed[key]
                artifacts.save_npz(paths[key], digest=True, **{key: computed[key]}, ids=split.ids)
    return Outputs(found["logits"], found.get("features"))


def transfer_signal(teacher: torch.nn.Module, train_split: Split, transfer_set: Split | None,
                    temperature: float) -> dict[str, dict]:
    """:func:`biaskd.metrics.teacher_signal` of the teacher's outputs on the inputs a student was
    distilled on: the labelled training set and the transfer inputs (their gold labels)."""
    parts = {"train": train_split, "transfer": transfer_set}
    return {name: teacher_signal(predict_logits(teacher, split.x), split.y, temperature)
            for name, split in parts.items() if split is not None and len(split)}


# -- evaluation -----------------------------------------------------------------------------------
def evaluate(model: torch.nn.Module, data: TaskData, run: RunDir, batch_size: int = 1024) -> dict[str, dict]:
    results = {}
    for name, split in data.evals.items():
        if is_lm(data):  # 2-class logits [singular, plural] at the verb position, plus perplexity
            scores = lm_scores(model, split, batch_size)
            logits = scores.verb_logits
            results[name] = {**split_metrics(logits, split.y, split.meta),
                             "perplexity": scores.perplexity, "n_tokens": scores.n_tokens}
        else:
            logits = predict_logits(model, split.x, batch_size)
            results[name] = split_metrics(logits, split.y, split.meta)
        artifacts.save_npz(
            run / "outputs" / f"{name}.npz",
            logits=logits,
            labels=split.y,
            ids=split.ids,
            **{f"meta_{k}": np.asarray(v) for k, v in split.meta.items()},
        )
    return results


def default_feature_steps(total_steps: int, configured: list[int] | None) -> list[int]:
    if configured:
        return [int(s) for s in configured if int(s) <= total_steps]
    steps = {0, total_steps}
    s = 1
    while s < total_steps:
        steps.add(s)
        s *= 2
    return sorted(steps)


def init_source(cfg: DictConfig) -> RunDir | None:
    """The complete run whose final weights initialise this one (``train.init_from``), or None."""
    path = cfg.train.get("init_from")
    if not path:
        return None
    return RunDir(absolute(path)).require_complete()


def data_summary(data: TaskData) -> dict:
    """Sizes of every split and where the data came from, for meta.json."""
    if hasattr(data, "summary"):
        return data.summary()
    sizes = {"train": len(data.train), "valid": len(data.valid), **{k: len(v) for k, v in data.evals.items()}}
    return {"task": data.task, "sizes": sizes, "source": getattr(data, "source", None),
            "fingerprint": data.fingerprint()}


# -- the driver -------------------------------------------------------------------------------------
def _meta(cfg: DictConfig, data: TaskData, run: RunDir, teacher_run: RunDir | None, digest: str,
          init_from: RunDir | None = None) -> dict:
    mode = cfg.distill.mode
    distilled = mode != "none"
    teacher_model = None
    if mode == "self":
        teacher_model = cfg.model.name
    elif distilled:
        teacher_model = cfg.teacher.model.name
    return {
        "format": artifacts.FORMAT,
        "format_version": artifacts.FORMAT_VERSION,
        "run_id": run.path.name,
        "name": run.path.name,
        # LM runs are their own task for analysis (their metrics are not comparable with classification)
        "task": f"{cfg.task.name}_lm" if getattr(data, "setup_kind", None) == "lm" else cfg.task.name,
        "setup": getattr(data, "setup_kind", "classification"),
        "data": data_summary(data),
        "model": cfg.model.name,
        "role": cfg.get("role", "student"),
        "distill": mode,
        "objective": cfg.distill.get("objective", "kd") if distilled else None,
        "objective_options": objective_options(cfg.distill) if distilled else None,
        "teacher_run": os.path.relpath(teacher_run.path, run.path.parent) if teacher_run else None,
        "teacher_run_id": teacher_run.path.name if teacher_run else None,
        "init_from": os.path.relpath(init_from.path, run.path.parent) if init_from else None,
        "teacher_model": teacher_model,
        "seed": int(cfg.seed),
        "alpha": float(cfg.distill.alpha) if distilled else None,
        "temperature": float(cfg.distill.temperature) if distilled else None,
        "config_hash": digest,
        "data_fingerprint": data.fingerprint(),
        "experiment": str(cfg.experiment_name),
        "num_classes": int(data.num_classes),
        "eval_splits": sorted(data.evals),
        "probe": {"split": data.probe_split, "n": int(len(data.probe))},
        "versions": _versions(),
        "git_commit": _git_commit(),
        "started": artifacts.now(),
    }


def _loggers(cfg: DictConfig, run: RunDir, meta: dict) -> list:
    loggers: list = [CSVLogger(save_dir=str(run.path), name="logs", version="")]
    lcfg = cfg.get("logger") or {}
    if lcfg.get("wandb", {}).get("enabled", False):
        from biaskd.wandb_logging import make_wandb_logger

        loggers.append(make_wandb_logger(cfg, run, meta))
    return loggers


def make_trainer(tcfg: dict, run: RunDir, loggers: list | bool, probe: Split, feature_steps: list[int]) -> L.Trainer:
    """The Trainer of a run: ``tcfg`` (the ``trainer`` config) plus the callbacks every run has:
    the epoch checkpoint (for resuming), the training-path recorder, the finite-loss guard and,
    when the bar is enabled, a progress bar that redraws a few times a second, not every step."""
    quiet_libraries()
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=str(run / "checkpoints"), filename="last", save_last=False,
                        save_top_k=1, every_n_epochs=1, enable_version_counter=False),
        TrainingPathRecorder(run, probe, feature_steps),
        # on a GPU, checking every step would make every step wait for the device
        FiniteLossGuard(every=int(tcfg.get("log_every_n_steps", 1) or 1) if tcfg.get("accelerator") != "cpu" else 1),
    ]
    if tcfg.get("enable_progress_bar", True):
        callbacks.append(ThrottledProgressBar())
    trainer = L.Trainer(**tcfg, default_root_dir=str(run.path), logger=loggers, callbacks=callbacks,
                        plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0)
    if tcfg.get("deterministic"):
        # deterministic algorithms, without also filling every new tensor with NaN (a debugging aid
        # for reads of uninitialised memory that torch turns on with them; ~4% of the SVA
        # Transformer's CPU step, and no op we use reads memory it has not written)
        torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def train(cfg: DictConfig, data: TaskData | None = None) -> RunDir:
    """Train the run ``cfg`` describes (if not already complete) and return its run dir.

    A run is a function of ``cfg`` alone: ``data`` only saves rebuilding splits that ``cfg``'s
    task config would build (batch order and size always come from ``cfg``)."""
    config_mod.check(cfg)
    cfg = config_mod.canonical(cfg)
    repair = bool(cfg.get("repair", False))
    set_threads(int(cfg.get("threads", 0) or 0))
    data = data or build_data(cfg)
    run = run_dir_for(cfg, data)
    if checked_complete(run, repair):
        log.info("complete, skipping: %s", run.path)
        return run

    check_model(cfg.model, data)  # fail before any (teacher) training
    if cfg.distill.mode in ("cross", "online"):
        check_model(cfg.teacher.model, data)
    if is_lm(data):
        check_lm_config(cfg)
    spec = transfer_mod.spec_of(cfg)
    transfer_set = transfer_mod.build(spec, data)  # before any (teacher) training: bad sources fail fast
    with run_lock(run):
        if checked_complete(run, repair):  # another process finished it while we waited
            log.info("complete, skipping: %s", run.path)
            return run
        return _train_run(cfg, data, run, spec, transfer_set, repair)


def _resume_checkpoint(run: RunDir, repair: bool) -> Path | None:
    """The verified ``last.ckpt`` of an interrupted run (stale temporary files removed), or None."""
    if not run.path.exists():
        return None
    for p in artifacts.remove_stale_temporaries(run.path):
        log.info("removed a temporary file left by an interrupted write: %s", p)
    ckpt = run.last_checkpoint
    if ckpt is None:
        return None
    try:
        artifacts.check_file(ckpt)
    except ArtifactError as exc:
        if not repair:
            raise
        set_aside(run, str(exc))
        return None
    return ckpt


def _csv_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def keep_csv_log(logger: CSVLogger, run: RunDir, resume_step: int) -> None:
    """Carry ``logs/metrics.csv`` across a resume: Lightning's CSV logger starts the file anew,
    so the rows logged before the checkpoint (step < ``resume_step``; later ones are logged
    again) are copied aside, replayed through the logger and written before training goes on."""
    path, kept = run / "logs" / "metrics.csv", run / "logs" / "metrics.resume.csv"
    rows, seen = [], set()
    for row in _csv_rows(kept) + _csv_rows(path):  # kept: a previous resume killed before its first write
        key = tuple(sorted(row.items()))
        if "step" in row and int(_number(row["step"])) < resume_step and key not in seen:
            seen.add(key)
            rows.append(row)
    if not rows:
        return
    columns = sorted(set().union(*rows))
    artifacts.atomic_write(kept, lambda f: f.write(_csv_text(columns, rows).encode()))
    for row in rows:
        logger.log_metrics({k: _number(v) for k, v in row.items() if k != "step"}, step=int(_number(row["step"])))
    logger.save()
    kept.unlink()


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _train_run(cfg: DictConfig, data: TaskData, run: RunDir, spec, transfer_set, repair: bool) -> RunDir:
    """Train ``run`` (holding its lock): resume or start, fit, evaluate, write, mark complete."""
    ckpt = _resume_checkpoint(run, repair)
    mode = cfg.distill.mode
    digest = config_mod.run_hash(cfg, data.fingerprint())
    teacher_run, teacher_model, cached = None, None, Outputs(None)
    if mode in ("self", "cross"):
        teacher_run = ensure_teacher(cfg, data)
        teacher_model = load_model(teacher_run, data)
    elif mode == "none":
        teacher_metrics.prepare(cfg, data)  # teacher.compare=true: the teacher to compare with, trained first
    fit = transfer_mod.fit_split(data.train, transfer_set, spec, distilled=mode != "none")
    if is_lm(data) and is_sequence_level(cfg.distill):  # the student trains on the teacher's sentences
        fit = sequence_level_split(OmegaConf.to_container(cfg.distill, resolve=True), fit, teacher_model,
                                   cache_dir=teacher_run / "teacher_cache")
    if teacher_run is not None and cfg.distill.teacher_outputs == "cached" and not is_lm(data):  # LM: see biaskd.modules.lm
        cached = teacher_cache(teacher_run, teacher_model, data, features=objective_class(cfg.distill).needs_features,
                               split=fit)
    elif mode == "online":  # the online teacher's init from its own seed, whatever ran before in this process
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed) + int(cfg.teacher.get("seed_offset", 0) or 0))
            teacher_model = build_model(cfg.teacher.model, data)

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = build_model(cfg.model, data)
    init_from = init_source(cfg)
    if init_from is not None:  # continue training from another run's final weights (e.g. drift)
        try:
            model.load_state_dict(init_from.state_dict())
        except RuntimeError as exc:
            raise ConfigError(f"config key 'train.init_from': {init_from.path} does not fit model "
                              f"{cfg.model.name!r} ({str(exc).splitlines()[0]})") from None
    optim = dict(
        optimizer=cfg.train.optimizer,
        lr=float(cfg.train.lr),
        weight_decay=float(cfg.train.weight_decay),
        lr_schedule=cfg.train.get("lr_schedule", "constant"),
        grad_clip=cfg.train.get("grad_clip"),
    )
    # optional torch.compile of the student's step; `model` stays the plain module that is saved
    net = torch.compile(model) if cfg.train.get("compile", False) else model
    if is_lm(data):
        module: ClassifierModule = lm_module(cfg, net, teacher_model, data, fit=fit, **optim)
    elif mode == "none":
        module = ClassifierModule(net, **optim)
    else:
        module = DistillModule(
            net,
            teacher_logits=cached.logits,
            teacher_features=cached.features,
            objective=build_objective(cfg.distill, model, teacher_model),
            teacher=teacher_model,
            teacher_outputs=cfg.distill.teacher_outputs,
            alpha=float(cfg.distill.alpha),
            temperature=float(cfg.distill.temperature),
            t_squared=bool(cfg.distill.t_squared),
            alpha_schedule=cfg.distill.alpha_schedule,
            final_alpha=float(cfg.distill.final_alpha),
            **optim,
        )

    meta = _meta(cfg, data, run, teacher_run, digest, init_from)
    meta["transfer"] = {**transfer_mod.record(transfer_set, spec, mode != "none"), "n_fit": len(fit)}
    run.path.mkdir(parents=True, exist_ok=True)
    run.reset_outcome()
    artifacts.write_text(run / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if transfer_set is not None:  # which inputs were drawn: rebuild from meta["transfer"] to check
        artifacts.save_npz(run / "transfer.npz", ids=transfer_set.ids, labels=transfer_set.y,
                           **{k: np.asarray(v) for k, v in transfer_set.meta.items()})
    if not (run / "meta.json").exists():
        artifacts.write_json(run / "meta.json", meta)
    else:
        meta = run.meta

    # batch order and size from this run's own config (never from a data object shared with another run)
    train_batches = TensorBatches(fit, int(cfg.task.batch_size), shuffle=True, seed=int(cfg.seed),
                                  lengths=data.lengths(fit))
    data.train_dataloader = lambda: train_batches  # the module re-seeds it per epoch
    total_steps = len(train_batches) * int(cfg.trainer.max_epochs)
    probe = verb_prefix(data.probe) if is_lm(data) else data.probe  # LM: features before the verb
    steps = default_feature_steps(total_steps, cfg.train.get("feature_steps"))
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    loggers = _loggers(cfg, run, meta)
    trainer = make_trainer(tcfg, run, loggers, probe, steps)
    start = time.perf_counter()
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
        resume_step = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step", 0))
        keep_csv_log(loggers[0], run, resume_step)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    except TrainingError as exc:
        run.mark_failed(str(exc))
        raise
    wall = time.perf_counter() - start
    if trainer.interrupted:
        raise KeyboardInterrupt(f"training of {run.path} was interrupted; rerun the same command to resume")

    artifacts.save_state_dict(run / "model.pt", model.state_dict())
    splits = evaluate(model, data, run, int(cfg.task.get("eval_batch_size", 1024)))
    feats = batched_features(model, probe.x)
    artifacts.save_npz(run / "features" / "final.npz", features=feats, ids=probe.ids, step=trainer.global_step)
    metrics = {
        "splits": splits,
        "train": {"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch), "wall_time_s": wall},
    }
    if mode in ("self", "cross") and not is_lm(data):  # what the soft targets carried beyond the labels
        metrics["teacher_signal"] = transfer_signal(teacher_model, data.train, transfer_set,
                                                    float(cfg.distill.temperature))
    # agreement, JS divergence and probe CKA with the teacher, for metrics.json and the dashboard
    comparison = teacher_metrics.compare(cfg, data, run, probe, feats, teacher_run, teacher_model,
                                         int(cfg.task.get("eval_batch_size", 1024)))
    if comparison is not None:
        comparison.add_to(metrics)
    artifacts.write_json(run / "metrics.json", metrics)
    if (cfg.get("logger") or {}).get("wandb", {}).get("log_predictions", False):
        from biaskd.wandb_logging import log_predictions

        log_predictions(trainer.loggers, run, list(splits), data=data, comparison=comparison,
                        max_rows=int(cfg.logger.wandb.get("prediction_rows", 500)))
    teacher_metrics.log_to_wandb(trainer.loggers, comparison)
    for lg in trainer.loggers:
        if hasattr(lg, "log_metrics"):
            lg.log_metrics({**{f"{s}/{k}": v for s, m in splits.items() for k, v in m.items() if isinstance(v, float)},
                            **(comparison.scalars() if comparison else {})}, step=trainer.global_step)
        lg.finalize("success")
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.finish()  # one W&B run per biaskd run (teachers trained in-process too)
    run.mark_complete(wall_time_s=wall)
    return run
