"""Optional parts and the extra that installs each: ``pip install -e ".[wandb]"`` for W&B logging,
``".[cluster]"`` for the SLURM launcher, ``".[search]"`` for hyperparameter searches. The core (training, analysis, local sweeps) runs without
them; a config or command that needs one says which extra to install instead of failing on an
import deep inside."""
from __future__ import annotations

import importlib.util

#: top-level module -> (the extra that installs it, what needs it)
EXTRAS = {
    "wandb": ("wandb", "W&B logging (logger=wandb, analysis.report --wandb)"),
    "submitit": ("cluster", "the SLURM launcher (hydra/launcher=slurm)"),
    "hydra_plugins.hydra_submitit_launcher": ("cluster", "the SLURM launcher (hydra/launcher=slurm)"),
    "optuna": ("search", "hyperparameter search (hparams_search=..., the Optuna sweeper)"),
    "hydra_plugins.hydra_optuna_sweeper": ("search", "hyperparameter search (hparams_search=..., the Optuna sweeper)"),
}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        return False


def message(module: str) -> str:
    extra, what = EXTRAS[module]
    return (f"{what} needs the optional package {module.split('.')[0]!r}, which is not installed: "
            f'pip install -e ".[{extra}]"')


def hint_for(exc: BaseException) -> str | None:
    """The install hint for an import of an optional package anywhere in ``exc``'s chain, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            for module in EXTRAS:
                if exc.name == module or exc.name.startswith(module + ".") or module.startswith(exc.name + "."):
                    return message(module)
        # Hydra without the launcher plugin: "Could not find 'hydra/launcher/submitit_slurm'"
        if "submitit" in str(exc) and not installed("hydra_plugins.hydra_submitit_launcher"):
            return message("hydra_plugins.hydra_submitit_launcher")
        if "hydra/sweeper/optuna" in str(exc) and not installed("hydra_plugins.hydra_optuna_sweeper"):
            return message("hydra_plugins.hydra_optuna_sweeper")
        exc = exc.__cause__ or exc.__context__
    return None
