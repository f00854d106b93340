"""biaskd: does knowledge distillation carry a teacher's inductive bias into a student?"""
from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

#: the folder holding biaskd/ and conf/ (a clone's root): the default data_dir is anchored here,
#: so a command run from another folder reads the same data
PROJECT_ROOT = Path(__file__).resolve().parent.parent
OmegaConf.register_new_resolver("biaskd_root", lambda: str(PROJECT_ROOT), replace=True)
