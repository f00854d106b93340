"""How a language model generates: greedy decoding and beam search from a prompt of each sentence
(optionally forced to one of two forms at a given position), and the candidate closest to a gold
sentence by sentence-level BLEU (Seq-Inter). Any model with ``lm_logits`` decodes; sequence-level
KD (:mod:`biaskd.run.teacher_sentences`) uses it to make a teacher's sentences."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from biaskd.data.base import PAD_ID
from biaskd.modules.lm import SCORE_LOGITS


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
