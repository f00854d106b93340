"""The training data of sequence-level KD (Kim & Rush 2016; ``objective=seqkd``, options in
:mod:`biaskd.objectives.seqkd`): the sentences a teacher generates (beam search,
:mod:`biaskd.models.decoding`, from a prompt of each training sentence), relabelled with the verb
the teacher chose and cached in the teacher's run dir, are the student's training split; the
student is an :class:`~biaskd.modules.lm.LMModule` (:func:`biaskd.modules.lm.sequence_level_module`).
Prompt, verb, decoding, Seq-KD vs Seq-Inter, the α mix and the cache: ``docs/sequence-level-kd.md``.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from biaskd.data.base import PAD_ID, Split, concat_splits
from biaskd.errors import ArtifactError, ConfigError
from biaskd.models.decoding import Forced, closest_to_gold, decode
from biaskd.modules.lm import uses_gold
from biaskd.objectives import objective_class
from biaskd.objectives.seqkd import SequenceLevelKD
from biaskd.record import artifacts

log = logging.getLogger("biaskd")

#: bump when the cached arrays change meaning
CACHE_VERSION = 1


def is_sequence_level(distill: Mapping[str, Any]) -> bool:
    """Whether the objective ``distill`` names trains on teacher-generated sequences."""
    return bool(getattr(objective_class(distill), "sequence_level", False))


# -- the student's training split ---------------------------------------------------------------------
def prompt_lengths_of(split: Split, prompt: str, prompt_tokens: int) -> torch.Tensor:
    """(n,) prompt length of every sentence (see the module docstring)."""
    lengths = (split.x != PAD_ID).sum(1)
    if prompt == "verb":
        if "verb_pos" not in split.meta:
            raise ConfigError(f"distill.seqkd.prompt=verb: split {split.name!r} has no meta 'verb_pos' "
                              f"(build the task with setup=lm)")
        return torch.as_tensor(np.asarray(split.meta["verb_pos"]), dtype=torch.long)
    if prompt == "tokens":
        return torch.clamp(torch.minimum(torch.full_like(lengths, prompt_tokens), lengths - 1), min=1)
    raise ConfigError(f"distill.seqkd.prompt must be one of verb, tokens; got {prompt!r}")


def verb_numbers(split: Split) -> tuple[dict[int, int], dict[int, int]]:
    """Token → number (0 singular, 1 plural) of every verb form the split's LM meta names on its
    labelled rows, and token → its other-number form; tokens seen with both numbers (or with two
    counterparts) are left out."""
    labelled = split.y.numpy() >= 0
    triples = zip(np.asarray(split.meta["correct_id"])[labelled].tolist(),
                  np.asarray(split.meta["wrong_id"])[labelled].tolist(), split.y.numpy()[labelled].tolist())
    numbers: dict[int, set[int]] = {}
    partners: dict[int, set[int]] = {}
    for c, w, label in set(triples):
        numbers.setdefault(c, set()).add(label)
        numbers.setdefault(w, set()).add(1 - label)
        partners.setdefault(c, set()).add(w)
        partners.setdefault(w, set()).add(c)
    number = {t: next(iter(s)) for t, s in numbers.items() if len(s) == 1}
    partner = {t: next(iter(s)) for t, s in partners.items() if len(s) == 1 and t in number}
    return number, partner


def relabel(split: Split, x: torch.Tensor, prompt_lengths: torch.Tensor) -> Split:
    """``split`` with inputs ``x`` (teacher sequences, same shape) and the LM meta and y of the
    verb each generated sentence has, where the teacher chose it (see the module docstring).
    Meta ``gold_label`` keeps the split's y (−1 for an input without gold label)."""
    meta = {k: np.asarray(v).copy() for k, v in split.meta.items()}
    y = split.y.clone()
    teacher_number = np.full(len(split), -1, dtype=np.int64)
    if all(k in meta for k in ("verb_pos", "correct_id", "wrong_id")):
        number, partner = verb_numbers(split)
        verb_pos = meta["verb_pos"]
        correct, wrong = meta["correct_id"], meta["wrong_id"]
        tokens = x[torch.arange(len(x)), torch.as_tensor(verb_pos)].numpy()
        for i in np.flatnonzero(verb_pos >= prompt_lengths.numpy()):  # the teacher wrote the verb
            t = int(tokens[i])
            if t not in number:
                continue
            k = number[t]
            pair = (int(correct[i]), int(wrong[i]))
            if t in partner:
                other = partner[t]
            elif t in pair:
                other = pair[1 - pair.index(t)]
            else:  # the row's own form of the other number, if known
                other = next((f for f in pair if number.get(f) == 1 - k), pair[1])
            correct[i], wrong[i] = t, other
            y[i] = k
            teacher_number[i] = k
    meta["teacher_number"] = teacher_number
    meta["gold_label"] = split.y.numpy().copy()
    meta["length"] = (x != PAD_ID).sum(1).numpy()
    return Split(name=split.name, x=x, y=y, ids=split.ids.clone(), meta=meta)


def teacher_digest(model: nn.Module) -> str:
    """Content hash of a model's weights: which teacher generated a cache file."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)}".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_path(cache_dir: Path, split: Split, generation: Mapping[str, Any]) -> Path:
    key = artifacts.config_hash({"split": split.fingerprint(), "generation": dict(generation), "version": CACHE_VERSION})
    return Path(cache_dir) / f"seqkd-{split.name}-{key}.npz"


def _read_cache(path: Path, split: Split, stamp: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        z = artifacts.load_npz(path)
    except ArtifactError as exc:
        log.warning("sequence-level KD cache %s is unreadable (%s); generating again", path, exc)
        return None
    problem = None
    if not {"sequences", "scores", "ids", "stamp"} <= set(z):
        problem = f"lacks arrays (has {sorted(z)})"
    elif str(z["stamp"]) != stamp:
        problem = "was generated by another teacher or with other options"
    elif not np.array_equal(z["ids"], split.ids.numpy()):
        problem = "holds other examples"
    elif tuple(z["sequences"].shape) != shape or z["scores"].shape != shape[:2]:
        problem = f"has shape {tuple(z['sequences'].shape)}, expected {shape}"
    if problem:
        log.warning("sequence-level KD cache %s %s; generating again", path, problem)
        return None
    return torch.from_numpy(z["sequences"].astype(np.int64)), torch.from_numpy(z["scores"].astype(np.float32))


def verb_forms(split: Split) -> Forced:
    """The verb position of every sentence and its two candidate forms (``verb: candidates``)."""
    missing = [k for k in ("verb_pos", "correct_id", "wrong_id") if k not in split.meta]
    if missing:
        raise ConfigError(f"distill.seqkd.verb=candidates: split {split.name!r} has no LM meta {missing} "
                          f"(build the task with setup=lm)")
    meta = split.meta
    ids = np.stack([np.asarray(meta["correct_id"]), np.asarray(meta["wrong_id"])], 1)
    return Forced(torch.as_tensor(np.asarray(meta["verb_pos"]), dtype=torch.long), torch.as_tensor(ids, dtype=torch.long))


def teacher_candidates(split: Split, teacher: nn.Module, generation: Mapping[str, Any],
                       prompt_lengths: torch.Tensor, cache_dir: Path | None,
                       block: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's beam candidates (n, width, L) and scores (n, width) for every sentence of
    ``split``, read from or written to ``cache_dir`` (None: no cache)."""
    lengths = (split.x != PAD_ID).sum(1)
    width = int(generation["beam_width"])
    force = verb_forms(split) if generation["verb"] == "candidates" else None

    def generate() -> tuple[torch.Tensor, torch.Tensor]:
        return decode(teacher, split.x, prompt_lengths, lengths, width, force, block=block)

    if cache_dir is None:
        return generate()
    path = cache_path(cache_dir, split, generation)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = json.dumps({"generation": dict(generation), "split": split.fingerprint(),
                        "teacher": teacher_digest(teacher), "version": CACHE_VERSION}, sort_keys=True)
    with FileLock(str(path) + ".lock"):
        for p in artifacts.remove_stale_temporaries(path.parent, of=[path]):  # a killed writer's, under its lock
            log.info("removed a temporary file left by an interrupted write: %s", p)
        found = _read_cache(path, split, stamp, (len(split), width, split.x.shape[1]))
        if found is not None:
            log.info("sequence-level KD: teacher sequences from %s", path)
            return found
        sequences, scores = generate()
        artifacts.save_npz(path, digest=True, sequences=sequences.to(torch.int32), scores=scores, ids=split.ids,
                           stamp=np.asarray(stamp))
        log.info("sequence-level KD: teacher sequences written to %s", path)
    return sequences, scores


def sequence_level_split(options: Mapping[str, Any], split: Split, teacher: nn.Module,
                         cache_dir: Path | None = None, block: int = 512) -> Split:
    """The training split of a sequence-level KD student (see the module docstring).

    ``options`` is the run's ``distill`` config (a mapping: ``seqkd`` options under
    ``options["seqkd"]``, plus ``alpha``, ``alpha_schedule``, ``final_alpha``); ``split`` the
    task's training split in the LM setup; ``teacher`` a model with ``lm_logits``; ``cache_dir``
    where generated sequences are kept (the teacher run's ``teacher_cache/``). Returns the
    teacher's sequences (meta ``source`` = 1), followed by the gold ones (``source`` = 0) when
    α can fall below 1.
    """
    given = dict(options.get(SequenceLevelKD.name) or {})
    SequenceLevelKD.check_options(given, f"distill.{SequenceLevelKD.name}")
    opts = SequenceLevelKD.config_options({SequenceLevelKD.name: given})
    generation = {"beam_width": int(opts["beam_width"]), "prompt": opts["prompt"], "verb": opts["verb"]}
    if opts["prompt"] == "tokens":
        generation["prompt_tokens"] = int(opts["prompt_tokens"])
    prompt_lengths = prompt_lengths_of(split, opts["prompt"], int(opts["prompt_tokens"]))
    candidates, scores = teacher_candidates(split, teacher, generation, prompt_lengths, cache_dir, block)

    if opts["mix"] == "interpolate":
        choice = closest_to_gold(candidates, scores, split.x, prompt_lengths, (split.x != PAD_ID).sum(1))
    else:
        choice = torch.zeros(len(split), dtype=torch.long)
    x = candidates[torch.arange(len(split)), choice].to(split.x.dtype)
    fit = relabel(split, x, prompt_lengths)
    fit.meta["source"] = np.ones(len(fit), dtype=np.int64)

    differs = float((x != split.x).any(1).float().mean()) if len(split) else 0.0
    decided = fit.meta["teacher_number"] >= 0
    compared = decided & (split.y.numpy() >= 0)
    agree = float((fit.y.numpy()[compared] == split.y.numpy()[compared]).mean()) if compared.any() else float("nan")
    log.info("sequence-level KD: %d teacher sequences (beam %d, prompt %s, mix %s): %.1f%% differ from the gold "
             "sentence; the teacher chose a verb number for %.1f%%, the gold one for %.1f%% of those labelled",
             len(fit), generation["beam_width"], opts["prompt"], opts["mix"], 100 * differs,
             100 * float(decided.mean()) if len(fit) else 0.0, 100 * agree)

    if uses_gold(options):
        labelled = torch.nonzero(split.y >= 0).squeeze(1)  # inputs without gold label have no gold row
        gold = split.subset(labelled)
        gold.meta.update(teacher_number=np.full(len(gold), -1, dtype=np.int64), gold_label=gold.y.numpy().copy(),
                         length=(gold.x != PAD_ID).sum(1).numpy(), source=np.zeros(len(gold), dtype=np.int64))
        fit = concat_splits(fit.name, [fit, gold])
    return Split(name=f"{split.name}-seqkd", x=fit.x, y=fit.y, ids=fit.ids, meta=fit.meta)
