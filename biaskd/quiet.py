"""What the libraries print that the project has chosen to live with, silenced in this one place.

Each entry says why it is harmless here; anything not listed still prints.
"""
from __future__ import annotations

import logging
import warnings

#: (message pattern, why it is harmless here)
KNOWN_WARNINGS = (
    (r".*does not have many workers.*",
     "training data are in-memory tensors cut into batches by index (TensorBatches); worker processes "
     "would only copy them"),
    (r".*LeafSpec.*",
     "Lightning's own use of a torch pytree API that newer torch deprecates; no code of ours involved"),
    (r".*overridden `transfer_batch_to_device` in `LightningModule` but have passed in a `LightningDataModule`.*",
     "the module's own transfer_batch_to_device (ClassifierModule) is the one meant to run; Lightning says it "
     "will use it"),
    (r".*smaller than the logging interval.*",
     "tiny runs (tests, smoke runs) have fewer batches an epoch than log_every_n_steps; metrics.json "
     "holds the results, the CSV log is a by-product"),
    (r".*when logging on epoch level in distributed setting.*",
     "with several processes (trainer=ddp) every process validates on the whole validation split with the "
     "same weights, so the value each logs is the split's; averaging them over processes adds nothing"),
)
#: Lightning's informational lines (devices found, a tip for a hosted logger, why fit stopped)
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                     "lightning.pytorch.accelerators.cuda")


def quiet_libraries() -> None:
    """Install the filters above (repeat calls add nothing) and keep Lightning's info lines out
    of the output (its warnings and errors still show)."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
