"""A run's data from its config: the task config instantiated (Hydra) and set up."""
from __future__ import annotations

import json
import os
from pathlib import Path

import hydra.utils
from omegaconf import DictConfig, OmegaConf

from biaskd.data.datamodule import TaskData
from biaskd.errors import ConfigError

#: keys of the task config that describe the task, not the data module's arguments
_TASK_META_KEYS = ("name", "kd", "bias")


def absolute(path: str | os.PathLike) -> Path:
    """A config path relative to where the command was launched (Hydra-aware)."""
    try:
        return Path(hydra.utils.to_absolute_path(str(path)))
    except ValueError:  # Hydra not initialised (library use)
        return Path(path).resolve()


#: the last data built in this process, by its task config: the jobs of a sweep that a launcher
#: runs in one process (basic, joblib's reused workers) share one task, and rebuilding it (e.g.
#: 20 MNIST OOD splits) would cost more than a short run's training
_last: dict[str, TaskData] = {}


def build_data(cfg: DictConfig, seed: int | None = None) -> TaskData:
    """The task's data, set up. The splits depend on the task config only, never on the run's
    seed (which only orders training batches, from the run's config), so a data object built for
    an identical task config earlier in this process is reused."""
    spec = OmegaConf.to_container(cfg.task, resolve=True)
    for key in _TASK_META_KEYS:
        spec.pop(key, None)
    for folder in ("data_dir", "cache_dir"):
        if spec.get(folder) is not None:
            spec[folder] = str(absolute(spec[folder]))
    key = json.dumps(spec, sort_keys=True, default=str)
    spec["seed"] = int(cfg.seed if seed is None else seed)
    if key in _last:
        data = _last[key]
        data.seed = spec["seed"]
        return data
    try:
        data = hydra.utils.instantiate(spec, _convert_="all")
    except Exception as exc:
        raise ConfigError(f"cannot build task {cfg.task.name!r}: {exc}") from exc
    data.setup()
    _last.clear()
    _last[key] = data
    return data
