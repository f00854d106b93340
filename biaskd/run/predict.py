"""A trained model's outputs: logits and features in input order, and the eval splits' outputs
and metrics as a run dir records them."""
from __future__ import annotations

import torch

from biaskd.data.base import PAD_ID, Split
from biaskd.data.base import is_lm
from biaskd.data.datamodule import TaskData
from biaskd.metrics import split_metrics, teacher_signal
from biaskd.modules.lm import lm_scores
from biaskd.objectives import features_and_logits
from biaskd.record.artifacts import RunDir


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


def split_logits(model: torch.nn.Module, data: TaskData, split: Split, batch_size: int = 1024):
    """``(logits, extra metrics)`` of ``model`` on an eval split, as ``outputs/<split>.npz`` holds
    them: class logits, or in the LM setup the 2-class verb logits ``[singular, plural]`` at the
    verb position, with the split's perplexity."""
    if is_lm(data):
        scores = lm_scores(model, split, batch_size)
        return scores.verb_logits, {"perplexity": scores.perplexity, "n_tokens": scores.n_tokens}
    return predict_logits(model, split.x, batch_size), {}


def evaluate(model: torch.nn.Module, data: TaskData, run: RunDir, batch_size: int = 1024) -> dict[str, dict]:
    """Write ``outputs/<split>.npz`` of every eval split; return its metrics per split."""
    results = {}
    for name, split in data.evals.items():
        logits, extra = split_logits(model, data, split, batch_size)
        results[name] = {**split_metrics(logits, split.y, split.meta), **extra}
        run.write_outputs(name, logits, split.y, split.ids, split.meta)
    return results


def transfer_signal(teacher: torch.nn.Module, train_split: Split, transfer_set: Split | None,
                    temperature: float) -> dict[str, dict]:
    """:func:`biaskd.metrics.teacher_signal` of the teacher's outputs on the inputs a student was
    distilled on: the labelled training set and the transfer inputs (their gold labels)."""
    parts = {"train": train_split, "transfer": transfer_set}
    return {name: teacher_signal(predict_logits(teacher, split.x), split.y, temperature)
            for name, split in parts.items() if split is not None and len(split)}
