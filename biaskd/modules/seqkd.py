"""Sequence-level knowledge distillation for the LM setup (Kim & Rush 2016; ``objective=seqkd``):
the student trains with next-token cross-entropy on sentences its teacher generates (beam
search from a prompt of each training sentence), built once and cached in the teacher's run dir.
Prompt, verb, decoding, Seq-KD vs Seq-Inter, the α mix and the cache: ``docs/sequence-level-kd.md``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from biaskd import artifacts
from biaskd.data.base import PAD_ID, Split, concat_splits
from biaskd.errors import ArtifactError, ConfigError
from biaskd.modules.lm import SCORE_LOGITS, LMModule, VerbTargets
from biaskd.objectives import objective_class
from biaskd.objectives.seqkd import SequenceLevelKD

log = logging.getLogger("biaskd")

#: bump when the cached arrays change meaning
CACHE_VERSION = 1


def is_sequence_level(distill: Mapping[str, Any]) -> bool:
    """Whether the objective ``distill`` names trains on teacher-generated sequences."""
    return bool(getattr(objective_class(distill), "sequence_level", False))


def uses_gold(distill: Mapping[str, Any]) -> bool:
    """Whether α can fall below 1 during training, so gold sentences are trained on too."""
    alpha = float(distill.get("alpha", 1.0))
    if distill.get("alpha_schedule", "constant") != "constant":
        alpha = min(alpha, float(distill.get("final_alpha", 0.0)))
    return alpha < 1


# -- decoding -----------------------------------------------------------------------------------------
def _next_logprobs(model: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(B, V) next-token log-probabilities after position ``pos`` of each row of ``x``, with
    ``<pad>`` excluded. Identical rows run once (a beam starts as ``width`` copies of its
    prompt; corpora repeat prefixes); the forward runs in row chunks of at most
    ``SCORE_LOGITS`` logits."""
    width = int(pos.max()) + 1
    unique, inverse = torch.unique(torch.cat([x[:, :width], pos[:, None]], 1), dim=0, return_inverse=True)
    rows, at = unique[:, :width], unique[:, width]
    vocab = int(getattr(model, "vocab_size", 0) or 0)
    step = max(1, SCORE_LOGITS // (width * vocab)) if vocab else len(rows)
    out = []
    for i in range(0, len(rows), step):
        logits = model.lm_logits(rows[i : i + step]).float()
        out.append(logits[torch.arange(len(logits), device=logits.device), at[i : i + step]])
    logits = torch.cat(out)
    logits[:, PAD_ID] = -math.inf
    return torch.log_softmax(logits, dim=-1)[inverse]


def _force(logp: torch.Tensor, here: torch.Tensor, force: "Forced | None") -> torch.Tensor:
    """``logp`` (B, V) of rows about to write position ``here`` (B,), with every token but the
    forced ones set to −inf on rows where ``here`` is their forced position. Not renormalised:
    a sequence's score stays its log-probability under the model."""
    if force is None:
        return logp
    hit = here == force.pos
    if not hit.any():
        return logp
    keep = torch.zeros_like(logp, dtype=torch.bool).scatter_(1, force.ids, True)
    return logp.masked_fill(hit[:, None] & ~keep, -math.inf)


class Forced(NamedTuple):
    """Per row: the position ``pos`` (n,) whose token must be one of ``ids`` (n, k)."""

    pos: torch.Tensor
    ids: torch.Tensor

    def __getitem__(self, index) -> "Forced":
        return Forced(self.pos[index], self.ids[index])

    def to(self, device) -> "Forced":
        return Forced(self.pos.to(device), self.ids.to(device))

    def repeat_interleave(self, k: int) -> "Forced":
        return Forced(self.pos.repeat_interleave(k), self.ids.repeat_interleave(k, dim=0))


def _prompts(x: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    keep = torch.arange(x.shape[1], device=x.device)[None, :] < prompt_lengths[:, None]
    return torch.where(keep, x, torch.full_like(x, PAD_ID))


def _check_lengths(x: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor) -> None:
    if (prompt_lengths < 1).any():
        raise ValueError("every prompt needs at least one token")
    if (lengths < prompt_lengths).any() or (lengths > x.shape[1]).any():
        raise ValueError("target lengths must lie between the prompt length and the width of x")


@torch.no_grad()
def greedy_decode(model: nn.Module, x: torch.Tensor, prompt_lengths: torch.Tensor,
                  lengths: torch.Tensor, force: Forced | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Complete row i of right-padded ``x`` from its first ``prompt_lengths[i]`` tokens to
    ``lengths[i]`` tokens, the most probable token at each step (one of ``force.ids[i]`` at
    position ``force.pos[i]``). Returns the sequences (same shape as ``x``, right-padded) and
    their generated part's summed log-probability under the model."""
    _check_lengths(x, prompt_lengths, lengths)
    seq = _prompts(x, prompt_lengths)
    score = torch.zeros(len(x), device=x.device)
    cur = prompt_lengths.clone()
    while True:
        rows = (cur < lengths).nonzero().squeeze(1)
        if len(rows) == 0:
            return seq, score
        logp = _force(_next_logprobs(model, seq[rows], cur[rows] - 1), cur[rows], force[rows] if force is not None else None)
        best, token = logp.max(-1)
        seq[rows, cur[rows]] = token
        score[rows] += best
        cur[rows] += 1


@torch.no_grad()
def beam_search(model: nn.Module, x: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor,
                width: int, force: Forced | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search of ``width`` for every row of ``x`` (as :func:`greedy_decode`): the ``width``
    best completions, (n, width, L) right-padded, with their generated part's summed
    log-probabilities (n, width), best first. A row with fewer than ``width`` possible
    completions fills the rest with score −inf."""
    _check_lengths(x, prompt_lengths, lengths)
    if width < 1:
        raise ValueError(f"beam width must be >= 1, got {width}")
    n, L = x.shape
    seq = _prompts(x, prompt_lengths)[:, None, :].repeat(1, width, 1)
    scores = torch.full((n, width), -math.inf, device=x.device)
    scores[:, 0] = 0.0  # one live beam to start with, so the first step does not repeat itself
    cur = prompt_lengths.clone()
    while True:
        rows = (cur < lengths).nonzero().squeeze(1)
        if len(rows) == 0:
            return seq, scores
        r, here = len(rows), cur[rows]
        logp = _next_logprobs(model, seq[rows].reshape(r * width, L), (here - 1).repeat_interleave(width))
        if force is not None:
            logp = _force(logp, here.repeat_interleave(width), force[rows].repeat_interleave(width))
        vocab = logp.shape[-1]
        candidates = (scores[rows][:, :, None] + logp.view(r, width, vocab)).view(r, width * vocab)
        top, index = candidates.topk(width, dim=1)  # sorted, best first
        parent, token = index // vocab, index % vocab
        new = seq[rows].gather(1, parent[:, :, None].expand(-1, -1, L)).clone()
        new[torch.arange(r, device=x.device)[:, None], torch.arange(width, device=x.device)[None, :], here[:, None]] = token
        seq[rows] = new
        scores[rows] = top
        cur[rows] += 1


def decode(model: nn.Module, x: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor,
           width: int, force: Forced | None = None, block: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`beam_search` (greedy for width 1) of all rows, in blocks of similar length
    (sorted, so each block decodes as few steps and columns as it needs), in input order:
    candidates (n, width, L) and scores (n, width)."""
    n, L = x.shape
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = torch.argsort(lengths * (L + 1) + prompt_lengths, stable=True)
    seqs = torch.full((n, width, L), PAD_ID, dtype=x.dtype)
    scores = torch.full((n, width), -math.inf)
    try:
        for i in range(0, n, block):
            idx = order[i : i + block]
            cols = max(1, int(lengths[idx].max()))
            xb, pb, lb = x[idx, :cols].to(device), prompt_lengths[idx].to(device), lengths[idx].to(device)
            fb = force[idx].to(device) if force is not None else None
            if width == 1:
                s, sc = greedy_decode(model, xb, pb, lb, fb)
                s, sc = s[:, None, :], sc[:, None]
            else:
                s, sc = beam_search(model, xb, pb, lb, width, fb)
            seqs[idx, :, :cols] = s.cpu()
            scores[idx] = sc.cpu()
    finally:
        model.train(was_training)
    return seqs, scores


# -- Seq-Inter: the candidate closest to the gold sentence ------------------------------------------
def sentence_bleu(hypothesis: Sequence[int], reference: Sequence[int], max_n: int = 4) -> float:
    """Smoothed sentence-level BLEU: geometric mean of the clipped 1..``max_n``-gram precisions,
    the 2..``max_n``-gram ones add-one smoothed (Lin & Och 2004; Chen & Cherry 2014, method 2),
    times the brevity penalty. 0 when no unigram matches."""
    hyp, ref = list(hypothesis), list(reference)
    if not hyp:
        return 0.0
    log_p = 0.0
    for k in range(1, max_n + 1):
        h = Counter(tuple(hyp[i : i + k]) for i in range(len(hyp) - k + 1))
        r = Counter(tuple(ref[i : i + k]) for i in range(len(ref) - k + 1))
        match, total = sum(min(c, r[g]) for g, c in h.items()), max(len(hyp) - k + 1, 0)
        if k == 1:
            if match == 0:
                return 0.0
            log_p += math.log(match / total)
        else:
            log_p += math.log((match + 1) / (total + 1))
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(log_p / max_n)


def closest_to_gold(candidates: torch.Tensor, scores: torch.Tensor, gold: torch.Tensor,
                    start: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Index (n,) of each row's candidate with the highest :func:`sentence_bleu` against the gold
    sequence on positions ``start..lengths`` (the generated part). Ties go to the candidate the
    teacher scores higher; dead (−inf) candidates are never chosen over a live one."""
    best = torch.zeros(len(candidates), dtype=torch.long)
    for i in range(len(candidates)):
        a, b = int(start[i]), int(lengths[i])
        ref = gold[i, a:b].tolist()
        sims = [sentence_bleu(candidates[i, k, a:b].tolist(), ref) if math.isfinite(float(scores[i, k])) else -1.0
                for k in range(candidates.shape[1])]
        best[i] = int(np.argmax(sims))  # first maximum: the higher-scoring candidate
    return best


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


def shares_of(fit: Split, distill: Mapping[str, Any]) -> torch.Tensor:
    """Each row's share of its sentence in :func:`biaskd.modules.lm.mixture_nll`: ½ for the
    teacher and the gold row of a labelled sentence when gold rows are trained on, else 1.
    Raises ValueError when ``fit`` was not built for ``distill``'s α."""
    if "source" not in fit.meta or "gold_label" not in fit.meta:
        raise ValueError("not a sequence-level KD split: build it with sequence_level_split()")
    source, gold_label = np.asarray(fit.meta["source"]), np.asarray(fit.meta["gold_label"])
    paired = (gold_label >= 0) & uses_gold(distill)
    if int((source == 0).sum()) != int((paired & (source == 1)).sum()):
        raise ValueError("the sequence-level KD split does not match distill.alpha (it holds the gold sentences "
                         "exactly when alpha can fall below 1); build it from the same distill config")
    return torch.as_tensor(np.where(paired, 0.5, 1.0), dtype=torch.float32)


def sequence_level_module(cfg, model: nn.Module, data, fit: Split, **optim) -> LMModule:
    """The sequence-level KD student's :class:`LMModule`: no teacher (its sentences are ``fit``,
    built by :func:`sequence_level_split`), next-token CE on them, and when gold sentences are
    trained on too the α mix of :func:`biaskd.modules.lm.mixture_nll`."""
    shares = shares_of(fit, cfg.distill)  # checks that fit was built for this alpha
    mixed = uses_gold(cfg.distill)  # else: plain next-token CE on the teacher's sentences
    return LMModule(
        model,
        alpha=float(cfg.distill.alpha),
        alpha_schedule=cfg.distill.alpha_schedule,
        final_alpha=float(cfg.distill.final_alpha),
        valid_verbs=VerbTargets.of(data.valid),
        sources=torch.as_tensor(np.asarray(fit.meta["source"]), dtype=torch.long) if mixed else None,
        shares=shares if mixed else None,
        **optim,
    )
