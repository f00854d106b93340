"""Model construction from config.

A model config is a Hydra node with ``name`` (recorded in run dirs) and ``_target_`` (the class)
plus its keyword arguments. The task supplies what only the data knows: ``num_classes`` and
``in_shape`` for images, ``vocab_size`` for tokens. Adding a model = one class + one yaml.
"""
from __future__ import annotations

import inspect
from typing import Any

import hydra.utils
from omegaconf import DictConfig, OmegaConf
from torch import nn

from biaskd.data.base import is_lm
from biaskd.errors import ConfigError


def _causal(cls: type, spec: dict) -> bool:
    """Whether ``cls(**spec)`` would be a causal (left-to-right) model, without building it."""
    if "causal" in spec:
        return bool(spec["causal"])
    param = inspect.signature(cls).parameters.get("causal")
    if param is not None and param.default is not inspect.Parameter.empty:
        return bool(param.default)
    return bool(getattr(cls, "causal", False))


def check_model(cfg: DictConfig | dict, data: Any) -> tuple[type, dict]:
    """The model class and its keyword arguments, after checking that it fits the task of
    ``data`` — cheap, so the driver calls it before any (teacher) training starts."""
    spec = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    name = spec.pop("name", None)
    target = spec.get("_target_")
    if not target:
        raise ConfigError(f"model config {name!r} has no _target_ (the model class to build)")
    try:
        cls = hydra.utils.get_class(target)
    except Exception as exc:
        raise ConfigError(f"model {name!r}: cannot import {target!r} ({exc})") from None
    kind = getattr(cls, "input_kind", None)
    if kind != data.input_kind:
        raise ConfigError(
            f"model {name!r} ({target}) takes {kind!r} inputs but task {data.task!r} gives {data.input_kind!r}"
        )
    if is_lm(data) and not (hasattr(cls, "lm_logits") and _causal(cls, spec)):
        raise ConfigError(
            f"model {name!r} ({target}) cannot be a language model (task.setup=lm needs a causal model: "
            f"lstm, transformer_seq, universal_transformer_seq, or causal=true)"
        )
    return cls, spec


def build_model(cfg: DictConfig | dict, data: Any) -> nn.Module:
    """Instantiate the model of ``cfg`` for the task of ``data`` (a :class:`TaskData`).

    In the LM setup (``data.setup_kind == "lm"``) sequence models get a next-token head
    (``lm_head=True``) and no classifier; ``tie_embeddings`` comes from the model config.
    """
    cls, spec = check_model(cfg, data)
    name = cfg.get("name")
    extra: dict[str, Any] = {"num_classes": data.num_classes}
    if is_lm(data):
        extra = {"num_classes": 0, "lm_head": True}
    if data.input_kind == "image":
        extra["in_shape"] = tuple(data.train.x.shape[1:])
    else:
        extra["vocab_size"] = data.vocab_size
    try:
        return hydra.utils.instantiate(spec, **extra, _convert_="all")
    except Exception as exc:  # hydra wraps constructor errors; name the model config
        raise ConfigError(f"cannot build model {name!r}: {exc}") from exc
