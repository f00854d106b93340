"""A run's data from its config: the task config instantiated (Hydra) and set up."""
from __future__ import annotations

import os
from pathlib import Path

import hydra.utils
from omegaconf import DictConfig, OmegaConf

from biaskd.data.datamodule import TaskData
from biaskd.errors import ConfigError

#: keys of the task config that describe the task, not the data module's arguments
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
