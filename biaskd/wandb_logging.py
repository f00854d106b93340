"""Weights & Biases logging (``logger=wandb``).

Runs are grouped by experiment, typed teacher/student (``job_type``) and tagged with task,
distillation mode and seed. Without an API key (no ``WANDB_API_KEY``, no ``~/.netrc`` entry)
or with ``WANDB_MODE=offline`` the logger runs offline: everything goes to
``<run dir>/wandb/offline-run-*`` and can be uploaded later with ``wandb sync <that dir>``.

W&B stages the files of every logged table and image (``artifacts/staging`` under its data
directory, ``WANDB_DATA_DIR``, by default ``~/.local/share/wandb``) until they are uploaded; a run
with prediction tables stages thousands. Unless the user chose a data directory, each run's is
its own ``<run dir>/wandb``, so the staged files stay with the run they belong to.
"""
from __future__ import annotations

import logging
import netrc
import os

from omegaconf import DictConfig, OmegaConf

from biaskd.record.artifacts import RunDir

log = logging.getLogger("biaskd")


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str | None = None) -> str:
    """``online`` only when asked for (or allowed) and credentials exist; else ``offline``."""
    requested = requested or os.environ.get("WANDB_MODE") or "auto"
    if requested in ("offline", "disabled"):
        return requested
    if has_credentials():
        return "online"
    if requested == "online":
        log.warning("W&B: no API key found; logging offline (upload later with `wandb sync`)")
    return "offline"


#: the data directory this module last chose (a later run of the same process chooses its own)
_chosen_data_dir: str | None = None


def use_run_data_dir(run: RunDir) -> str:
    """Point W&B's data directory (``WANDB_DATA_DIR``, where it stages table and media files) at
    ``<run dir>/wandb`` unless the user set one; returns the directory in use."""
    global _chosen_data_dir
    current = os.environ.get("WANDB_DATA_DIR")
    if current is None or current == _chosen_data_dir:
        _chosen_data_dir = os.environ["WANDB_DATA_DIR"] = str(run.path / "wandb")
    return os.environ["WANDB_DATA_DIR"]


def make_wandb_logger(cfg: DictConfig, run: RunDir, meta: dict):
    from lightning.pytorch.loggers import WandbLogger

    use_run_data_dir(run)
    wcfg = cfg.logger.wandb
    mode = wandb_mode(wcfg.get("mode"))
    tags = [f"task:{meta['task']}", f"model:{meta['model']}", f"distill:{meta['distill']}",
            f"seed:{meta['seed']}", *list(wcfg.get("tags") or [])]
    if meta.get("teacher_model"):
        tags.append(f"teacher:{meta['teacher_model']}")
    return WandbLogger(
        project=wcfg.get("project", "biaskd"),
        entity=wcfg.get("entity"),
        name=meta["name"],
        id=meta["config_hash"] + f"-s{meta['seed']}",
        group=str(cfg.experiment_name),
        job_type=meta["role"],
        tags=tags,
        save_dir=str(run.path),
        offline=(mode == "offline"),
        mode=mode if mode == "disabled" else None,
        config=OmegaConf.to_container(cfg, resolve=True),
        resume="allow",
    )


def _thumbnail(x):
    """An image input as 8-bit grey (or RGB) pixels, its own range stretched to 0..255."""
    import numpy as np

    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3):  # C, H, W -> H, W[, C]
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo if hi > lo else 1.0) * 255).round().astype(np.uint8)


def table_inputs(data, split: str, n: int) -> tuple[str, list] | None:
    """The first ``n`` inputs of eval split ``split`` as W&B cells: an image per row for image
    tasks, the sentence for token tasks; None when the data cannot show them."""
    import wandb

    if data is None or split not in getattr(data, "evals", {}):
        return None
    x = data.evals[split].x[:n]
    if getattr(data, "input_kind", None) == "image":
        return "image", [wandb.Image(_thumbnail(xi)) for xi in x.cpu().numpy()]
    vocab = getattr(data, "vocab", None)
    if vocab is not None:
        return "sentence", [" ".join(vocab.decode(int(t) for t in row)) for row in x.cpu().tolist()]
    return None


def log_predictions(loggers: list, run: RunDir, splits: list[str], data=None, comparison=None,
                    max_rows: int = 500) -> None:
    """Per-example predictions of every eval split as W&B tables (first ``max_rows`` rows): the
    input (image thumbnail or sentence, given ``data``), label, prediction and confidence, the
    teacher's prediction and whether the two agree (given a
    :class:`biaskd.run.versus_teacher.TeacherComparison`), and the split's metadata."""
    from lightning.pytorch.loggers import WandbLogger
    import numpy as np

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    for split in splits:
        out = run.outputs(split)
        logits = out["logits"][:max_rows]
        n = len(logits)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        meta_keys = [k for k in out if k.startswith("meta_")]
        columns = ["id", "label", "prediction", "confidence"]
        cells = [out["ids"][:n].tolist(), out["labels"][:n].tolist(), probs.argmax(1).tolist(),
                 probs.max(1).tolist()]
        teacher = comparison.logits.get(split) if comparison is not None else None
        if teacher is not None:
            t_pred = np.asarray(teacher)[:n].argmax(1)
            columns += ["teacher_prediction", "agrees_with_teacher"]
            cells += [t_pred.tolist(), (t_pred == probs.argmax(1)).tolist()]
        shown = table_inputs(data, split, n)
        if shown is not None:
            columns.insert(1, shown[0])
            cells.insert(1, shown[1])
        columns += [k[5:] for k in meta_keys]
        cells += [out[k][:n].tolist() for k in meta_keys]
        rows = [list(row) for row in zip(*cells)]
        for lg in wandb_loggers:
            lg.log_table(key=f"predictions/{split}", columns=columns, data=rows)
