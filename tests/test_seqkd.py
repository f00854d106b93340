"""Sequence-level KD for the LM setup (Kim & Rush 2016): decoding, the student's training split,
its cache, the α mix, and config validation."""
import itertools
import logging
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import biaskd.run.train
from biaskd import config as config_mod
from biaskd.data.base import PAD_ID, Split
from biaskd.data.build import build_data
from biaskd.errors import ConfigError
from biaskd.models.decoding import beam_search, closest_to_gold, decode, greedy_decode, sentence_bleu
from biaskd.models.sequence import LSTMEncoder
from biaskd.modules.lm import LMModule, mixture_nll, sequence_level_module, shares_of, shift
from biaskd.objectives import OBJECTIVES, check_config, objective_options
from biaskd.record.artifacts import RunDir
from biaskd.record.identity import run_name
from biaskd.run.recipes import check_lm_config
from biaskd.run.teacher_sentences import cache_path, is_sequence_level, sequence_level_split, verb_forms
from biaskd.tools.cli import CONF_DIR

# modules are called directly here, without a Trainer to log to
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

V = 6  # tokens 0 (pad) .. 5


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Bigram(nn.Module):
    """An LM whose next-token distribution after token a is row a of a table: known by construction."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(probs.log())
        self.calls = 0

    def lm_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.table[x]


def bigram(rows: dict[int, dict[int, float]]) -> Bigram:
    """Row a: P(next | a); unspecified mass spread evenly over the other non-pad tokens (pad: 0)."""
    p = torch.zeros(V, V)
    for a in range(V):
        nxt = rows.get(a, {})
        others = [b for b in range(1, V) if b not in nxt]
        rest = (1.0 - sum(nxt.values())) / len(others) if others else 0.0
        p[a] = torch.tensor([0.0] + [nxt.get(b, rest) for b in range(1, V)])
    return Bigram(p)


def lm(seed: int = 0, vocab: int = V) -> LSTMEncoder:
    torch.manual_seed(seed)
    return LSTMEncoder(vocab, 0, d_model=8, dropout=0.0, lm_head=True).eval()


def sequence_logprob(model: nn.Module, seq: torch.Tensor, start: int, end: int) -> float:
    """log P(seq[start:end] | seq[:start]) under ``model``, pad excluded from the vocabulary."""
    with torch.no_grad():
        logits = model.lm_logits(seq[None, :end]).float()[0]
    logits[:, PAD_ID] = -math.inf
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[t - 1, seq[t]] for t in range(start, end)))


# -- decoding -----------------------------------------------------------------------------------------
def test_greedy_decoding_on_a_hand_built_bigram():
    # after 1: 3 (.6); after 3: 5 (.5); after 5: pad would win (.7) but pad is never generated -> 2 (.2)
    model = Bigram(torch.tensor([
        [0.0, 0.2, 0.2, 0.2, 0.2, 0.2],
        [0.0, 0.1, 0.1, 0.6, 0.1, 0.1],
        [0.0, 0.2, 0.2, 0.2, 0.2, 0.2],
        [0.0, 0.1, 0.1, 0.1, 0.2, 0.5],
        [0.0, 0.2, 0.2, 0.2, 0.2, 0.2],
        [0.7, 0.05, 0.2, 0.0, 0.05, 0.0],
    ]))
    x = torch.tensor([
        [4, 1, 9, 9, 9, 0],   # prompt "4 1", complete to length 5 (the 9s are not read)
        [1, 9, 9, 0, 0, 0],   # prompt "1", length 3
        [2, 2, 2, 2, 0, 0],   # prompt covers the whole length: unchanged
    ]).clamp(max=V - 1)
    prompt, length = torch.tensor([2, 1, 4]), torch.tensor([5, 3, 4])
    seq, score = greedy_decode(model, x, prompt, length)
    assert seq.tolist() == [[4, 1, 3, 5, 2, 0], [1, 3, 5, 0, 0, 0], [2, 2, 2, 2, 0, 0]]
    # the score is the generated part's log-probability, pad renormalised away after 5
    expected = [math.log(0.6) + math.log(0.5) + math.log(0.2 / 0.3), math.log(0.6) + math.log(0.5), 0.0]
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-6)


def test_beam_search_finds_the_best_sequence_where_greedy_does_not():
    # greedy takes 2 after 1 (.5) but every continuation of 2 is poor (.2): .5 * .2 = .10;
    # 1 -> 3 (.4) -> 4 (.9) = .36 is the most probable two-token completion
    model = bigram({1: {2: 0.5, 3: 0.4}, 3: {4: 0.9}})
    x = torch.tensor([[1, 0, 0]])
    prompt, length = torch.tensor([1]), torch.tensor([3])
    greedy, g_score = greedy_decode(model, x, prompt, length)
    assert greedy[0, :2].tolist() == [1, 2] and g_score.item() == pytest.approx(math.log(0.1), rel=1e-6)
    beams, scores = beam_search(model, x, prompt, length, width=2)
    assert beams[0, 0].tolist() == [1, 3, 4]
    assert scores[0, 0].item() == pytest.approx(math.log(0.36), rel=1e-6)
    assert scores[0, 1].item() == pytest.approx(math.log(0.1), rel=1e-6)  # the greedy path, second
    assert beams[0, 1, :2].tolist() == [1, 2]


def test_beam_width_one_is_greedy_on_a_batch_of_mixed_prompts():
    model = lm(1)
    torch.manual_seed(2)
    x = torch.randint(1, V, (12, 7))
    length = torch.randint(3, 8, (12,))
    x[torch.arange(7)[None, :] >= length[:, None]] = PAD_ID
    prompt = torch.minimum(torch.randint(1, 5, (12,)), length)
    seq, score = greedy_decode(model, x, prompt, length)
    beams, scores = beam_search(model, x, prompt, length, width=1)
    assert torch.equal(beams[:, 0], seq)
    torch.testing.assert_close(scores[:, 0], score)
    # prompts are kept, lengths are the targets, pad never appears inside a sequence
    assert torch.equal((seq != PAD_ID).sum(1), length)
    keep = torch.arange(7)[None, :] < prompt[:, None]
    assert torch.equal(seq[keep], x[keep])
    # decode() (sorted blocks, greedy path for width 1) returns the same in input order
    blocked, blocked_scores = decode(model, x, prompt, length, width=1, block=5)
    assert torch.equal(blocked[:, 0], seq)
    torch.testing.assert_close(blocked_scores[:, 0], score)


def test_beam_search_is_exact_when_the_beam_holds_every_prefix_and_scores_are_log_probs():
    model = lm(3)
    x = torch.tensor([[2, 3, 0, 0], [4, 1, 5, 0]])
    prompt, length = torch.tensor([2, 2]), torch.tensor([4, 3])
    beams, scores = beam_search(model, x, prompt, length, width=V - 1)  # 5 non-pad tokens: every 1-token prefix
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    for i in range(2):
        a, b = int(prompt[i]), int(length[i])
        best = max(
            (sequence_logprob(model, torch.tensor([*x[i, :a].tolist(), *c]), a, b), c)
            for c in itertools.product(range(1, V), repeat=b - a)
        )
        assert scores[i, 0].item() == pytest.approx(best[0], abs=1e-5)
        assert beams[i, 0, a:b].tolist() == list(best[1])
        for k in range(V - 1):  # every score is its candidate's log-probability under the model
            if math.isfinite(scores[i, k].item()):
                assert scores[i, k].item() == pytest.approx(sequence_logprob(model, beams[i, k], a, b), abs=1e-5)
    # the second row has one step to go: only 5 completions exist for its 5 beams, all distinct
    assert len({tuple(beams[1, k].tolist()) for k in range(V - 1)}) == V - 1
    # block-wise decoding in sorted order gives the same beams
    blocked, blocked_scores = decode(model, x, prompt, length, width=V - 1, block=1)
    assert torch.equal(blocked, beams) and torch.allclose(blocked_scores, scores)


# -- Seq-Inter ----------------------------------------------------------------------------------------
def test_sentence_bleu_hand_computed():
    # p1 = 3/4; p2 = (2+1)/(3+1); p3 = (1+1)/(2+1); p4 = (0+1)/(1+1); equal lengths: no brevity penalty
    expected = (3 / 4 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert sentence_bleu([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(expected)
    assert sentence_bleu([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert sentence_bleu([4, 4], [1, 2]) == 0.0
    assert sentence_bleu([7], [7]) == pytest.approx(1.0) and sentence_bleu([7], [8]) == 0.0
    # brevity penalty for a shorter hypothesis: exp(1 - 4/2)
    assert sentence_bleu([1, 2], [1, 2, 3, 4]) == pytest.approx(math.exp(1 - 2))


def test_closest_to_gold_picks_the_most_similar_live_candidate_ties_to_the_teacher():
    gold = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    candidates = torch.tensor([
        [[1, 5, 5, 5], [1, 2, 3, 5], [1, 2, 3, 4]],   # the gold itself is third
        [[1, 5, 5, 5], [1, 5, 5, 5], [1, 2, 3, 4]],   # ... but its score is -inf (dead beam)
    ])
    scores = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -math.inf]])
    best = closest_to_gold(candidates, scores, gold, start=torch.tensor([1, 1]), lengths=torch.tensor([4, 4]))
    assert best.tolist() == [2, 0]


# -- the student's training split ----------------------------------------------------------------------
def lm_split() -> Split:
    """Three sentences; verb forms 2 (singular) / 3 (plural); 4 and 5 are nouns/other."""
    x = torch.tensor([
        [1, 4, 2, 5, 0],   # singular, verb at 2
        [1, 5, 3, 4, 4],   # plural, verb at 2
        [4, 1, 4, 2, 0],   # singular, verb at 3
    ])
    y = torch.tensor([0, 1, 0])
    return Split("train", x, y, torch.tensor([10, 11, 12]), meta={
        "verb_pos": np.array([2, 2, 3]), "correct_id": np.array([2, 3, 2]), "wrong_id": np.array([3, 2, 3]),
        "attractors": np.array([0, 1, 0]), "length": np.array([4, 5, 4]),
    })


#: after 4 the teacher prefers the plural form 3, after 5 the singular 2; after a verb, 5 then 4
TEACHER_ROWS = {4: {3: 0.6, 2: 0.2}, 5: {2: 0.7, 4: 0.1}, 2: {5: 0.8}, 3: {4: 0.5, 5: 0.4}, 1: {4: 0.5}}


def seqkd(**options) -> dict:
    alpha = options.pop("alpha", 1.0)
    return {"mode": "cross", "objective": "seqkd", "alpha": alpha, "alpha_schedule": "constant", "final_alpha": 0.0,
            "seqkd": options}


def test_sequence_level_split_prompt_verb_relabels_by_the_teachers_verb():
    split, teacher = lm_split(), bigram(TEACHER_ROWS)
    fit = sequence_level_split(seqkd(beam_width=1), split, teacher)
    # prompts x[:verb_pos] are kept; the teacher writes the verb and the rest up to the length
    assert fit.x.tolist() == [[1, 4, 3, 4, 0], [1, 5, 2, 5, 2], [4, 1, 4, 3, 0]]
    assert fit.name == "train-seqkd" and torch.equal(fit.ids, split.ids)
    # the teacher's verb number: plural, singular, plural -> y and the candidate ids follow it
    assert fit.y.tolist() == [1, 0, 1]
    assert fit.meta["teacher_number"].tolist() == [1, 0, 1]
    assert fit.meta["correct_id"].tolist() == [3, 2, 3] and fit.meta["wrong_id"].tolist() == [2, 3, 2]
    assert fit.meta["verb_pos"].tolist() == [2, 2, 3] and fit.meta["source"].tolist() == [1, 1, 1]
    assert fit.meta["attractors"].tolist() == [0, 1, 0] and fit.meta["length"].tolist() == [4, 5, 4]
    # the split itself is untouched
    assert split.y.tolist() == [0, 1, 0] and split.meta["correct_id"].tolist() == [2, 3, 2]


def test_verb_candidates_make_the_teacher_decide_the_number_at_the_verb_position():
    split = lm_split()
    teacher = bigram({**TEACHER_ROWS, 4: {5: 0.8, 3: 0.15}})  # after 4 the teacher would write 5, not a verb
    fit = sequence_level_split(seqkd(beam_width=1), split, teacher)  # verb=candidates (default)
    assert fit.x[0, 2].item() == 3 and fit.x[2, 3].item() == 3  # the more probable of the two forms
    assert fit.meta["teacher_number"].tolist() == [1, 0, 1] and fit.y.tolist() == [1, 0, 1]
    # the score is the model's log-probability of the sentence, not renormalised over the two forms
    prompt, length = torch.as_tensor(split.meta["verb_pos"]), (split.x != PAD_ID).sum(1)
    _, scores = decode(teacher, split.x, prompt, length, 1, force=verb_forms(split))
    assert scores[2, 0].item() == pytest.approx(math.log(0.15), rel=1e-6)  # 4 -> 3, then the end
    beams, _ = decode(teacher, split.x, prompt, length, 3, force=verb_forms(split))
    assert set(beams[2, :2, 3].tolist()) == {2, 3}  # two live candidates: the two forms
    # prompt=tokens: the verb stays at its gold position
    short = sequence_level_split(seqkd(beam_width=2, prompt="tokens", prompt_tokens=1), split, teacher)
    assert all(short.x[i, split.meta["verb_pos"][i]].item() in (2, 3) for i in range(3))


def test_a_generated_token_that_is_not_a_verb_form_keeps_the_gold_number():
    split = lm_split()
    teacher = bigram({**TEACHER_ROWS, 4: {5: 0.9}})  # after 4 the teacher writes 5, not a verb
    fit = sequence_level_split(seqkd(beam_width=1, verb="free"), split, teacher)
    assert fit.x[0, 2].item() == 5 and fit.x[2, 3].item() == 5
    assert fit.y.tolist() == [0, 0, 0] and fit.meta["teacher_number"].tolist() == [-1, 0, -1]
    assert fit.meta["correct_id"].tolist() == [2, 2, 2] and fit.meta["wrong_id"].tolist() == [3, 3, 3]


def test_prompt_tokens_keeps_the_first_tokens_and_the_gold_number_when_the_verb_is_in_the_prompt():
    split, teacher = lm_split(), bigram(TEACHER_ROWS)
    fit = sequence_level_split(seqkd(beam_width=2, prompt="tokens", prompt_tokens=3), split, teacher)
    assert torch.equal(fit.x[:, :3], split.x[:, :3])
    assert torch.equal((fit.x != PAD_ID).sum(1), (split.x != PAD_ID).sum(1))
    # rows 0 and 1 have their verb (position 2) inside the prompt: gold; row 2's verb was generated
    assert fit.meta["teacher_number"].tolist()[:2] == [-1, -1] and fit.y.tolist()[:2] == [0, 1]
    assert fit.x[2, 3].item() == 3 and fit.y[2].item() == 1 and fit.meta["teacher_number"][2] == 1
    # a 1-token prompt: the teacher writes everything after the first token
    short = sequence_level_split(seqkd(beam_width=1, prompt="tokens", prompt_tokens=1), split, teacher)
    assert torch.equal(short.x[:, 0], split.x[:, 0]) and short.x[0].tolist() == [1, 4, 3, 4, 0]


def test_interpolate_trains_on_the_beam_candidate_closest_to_the_gold_sentence():
    split, teacher = lm_split(), bigram(TEACHER_ROWS)
    top = sequence_level_split(seqkd(beam_width=3), split, teacher)
    inter = sequence_level_split(seqkd(beam_width=3, mix="interpolate"), split, teacher)
    beams, _ = decode(teacher, split.x, torch.tensor([2, 2, 3]), torch.tensor([4, 5, 4]), width=3)
    assert torch.equal(top.x, beams[:, 0])  # Seq-KD: the teacher's best
    # Seq-Inter: row 0's gold continuation "2 5" is on the beam (second), so it is chosen
    assert [tuple(b[2:4].tolist()) for b in beams[0]].index((2, 5)) > 0
    assert inter.x[0].tolist() == split.x[0].tolist() and inter.y[0].item() == 0
    for i in range(3):  # every row: a candidate of maximal BLEU on the generated part
        a, b = int(split.meta["verb_pos"][i]), int(split.meta["length"][i])
        sims = [sentence_bleu(c[a:b].tolist(), split.x[i, a:b].tolist()) for c in beams[i]]
        assert sentence_bleu(inter.x[i, a:b].tolist(), split.x[i, a:b].tolist()) == pytest.approx(max(sims))


def test_alpha_below_one_adds_the_gold_sentences_as_a_second_source():
    split, teacher = lm_split(), bigram(TEACHER_ROWS)
    fit = sequence_level_split(seqkd(beam_width=1, alpha=0.3), split, teacher)
    assert len(fit) == 6 and fit.meta["source"].tolist() == [1, 1, 1, 0, 0, 0]
    assert torch.equal(fit.x[3:], split.x) and torch.equal(fit.y[3:], split.y) and torch.equal(fit.ids[3:], split.ids)
    assert fit.meta["teacher_number"].tolist()[3:] == [-1, -1, -1]
    assert fit.meta["gold_label"].tolist() == [0, 1, 0, 0, 1, 0]
    assert set(fit.meta) == set(split.meta) | {"source", "teacher_number", "gold_label"}
    # each sentence's teacher and gold rows share it: half each
    assert shares_of(fit, seqkd(alpha=0.3)).tolist() == [0.5] * 6
    # a schedule that decays alpha below 1 needs the gold rows too; alpha = 1 throughout does not
    sched = {**seqkd(beam_width=1), "alpha_schedule": "linear", "final_alpha": 0.5}
    assert len(sequence_level_split(sched, split, teacher)) == 6
    assert len(sequence_level_split({**sched, "final_alpha": 1.0}, split, teacher)) == 3


def test_mixture_loss_hand_computed_and_alpha_half_is_the_token_mean():
    # student: a bigram; batch: one teacher row (source 1, 2 tokens) and one gold row (source 0, 1 token)
    student = bigram({1: {2: 0.5}, 2: {3: 0.25}})
    x = torch.tensor([[1, 2, 3], [1, 4, 0]])
    inputs, targets, mask = shift(x)
    logits = student.lm_logits(inputs)
    nll_teacher = -math.log(0.5) - math.log(0.25)    # 1->2, 2->3
    nll_gold = -math.log(0.125)                       # 1->4: (1 - .5) / 4 other non-pad tokens
    sources, half = torch.tensor([1, 0]), torch.tensor([0.5, 0.5])
    for alpha in (1.0, 0.7, 0.5, 0.0):
        # both rows are halves of their sentences: tokens counted 0.5 * 2 + 0.5 * 1
        expected = (alpha * nll_teacher + (1 - alpha) * nll_gold) / 1.5
        assert mixture_nll(logits, targets, mask, sources, alpha, half).item() == pytest.approx(expected, rel=1e-6)
    plain = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")[mask].mean()
    assert mixture_nll(logits, targets, mask, sources, 0.5, half).item() == pytest.approx(plain.item(), rel=1e-6)
    # a teacher row of an input without gold label (share 1) counts alpha times its mean NLL
    only = mixture_nll(logits[:1], targets[:1], mask[:1], torch.tensor([1]), 0.7, torch.tensor([1.0]))
    assert only.item() == pytest.approx(0.7 * nll_teacher / 2, rel=1e-6)
    # the module's step is that loss, with alpha from the module (and gradients reach the student)
    module = LMModule(student, alpha=0.7, sources=torch.tensor([0, 0, 1, 0]), shares=torch.full((4,), 0.5))
    batch = {"x": x, "y": torch.zeros(2, dtype=torch.long), "idx": torch.tensor([2, 3])}
    loss = module.loss_step(batch, 0)
    assert loss.item() == pytest.approx((0.7 * nll_teacher + 0.3 * nll_gold) / 1.5, rel=1e-6)
    loss.backward()
    assert student.table.grad is not None


def test_inputs_without_gold_label_get_the_teachers_number_and_no_gold_row():
    split = lm_split()
    split.y[1] = -1  # a transfer-set input only the teacher labels
    teacher = bigram(TEACHER_ROWS)
    fit = sequence_level_split(seqkd(beam_width=1, alpha=0.5), split, teacher)
    # the verb forms' numbers come from the labelled rows; the teacher labels row 1 (singular 2)
    assert fit.y.tolist()[:3] == [1, 0, 1] and fit.meta["teacher_number"].tolist()[:3] == [1, 0, 1]
    assert fit.meta["correct_id"][1] == 2 and fit.meta["wrong_id"][1] == 3
    assert len(fit) == 5 and fit.meta["source"].tolist() == [1, 1, 1, 0, 0]
    assert fit.ids.tolist() == [10, 11, 12, 10, 12] and fit.meta["gold_label"].tolist() == [0, -1, 0, 0, 0]
    assert shares_of(fit, seqkd(alpha=0.5)).tolist() == [0.5, 1.0, 0.5, 0.5, 0.5]
    # a split built for another alpha is refused
    with pytest.raises(ValueError, match="alpha"):
        shares_of(fit, seqkd(alpha=1.0))
    with pytest.raises(ValueError, match="alpha"):
        shares_of(sequence_level_split(seqkd(beam_width=1), split, teacher), seqkd(alpha=0.5))


def test_a_student_that_is_its_teacher_scores_the_teacher_sequences_at_the_beam_scores():
    """No zero-loss identity holds for sequence-level KD (the student learns the teacher's
    sentences by CE, never 0 unless they are certain); what holds: the student's NLL on the
    generated tokens, when it is the teacher, is minus the teacher's beam score."""
    split, teacher = lm_split(), lm(4)
    beams, scores = decode(teacher, split.x, torch.as_tensor(split.meta["verb_pos"]), (split.x != 0).sum(1), 2,
                           force=verb_forms(split))
    fit = sequence_level_split(seqkd(beam_width=2), split, teacher)
    assert torch.equal(fit.x, beams[:, 0])
    with torch.no_grad():
        inputs, targets, mask = shift(fit.x)
        logits = teacher.lm_logits(inputs)
        logits[..., PAD_ID] = -math.inf
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    generated = torch.arange(targets.shape[1])[None, :] >= torch.as_tensor(split.meta["verb_pos"])[:, None] - 1
    torch.testing.assert_close(torch.where(mask & generated, nll, 0.0).sum(1), -scores[:, 0], rtol=1e-5, atol=1e-5)


# -- the cache ----------------------------------------------------------------------------------------
def test_generated_sequences_are_cached_shared_by_mix_and_recomputed_when_stale(tmp_path, caplog):
    split, teacher = lm_split(), bigram(TEACHER_ROWS)
    cache = tmp_path / "teacher" / "teacher_cache"
    first = sequence_level_split(seqkd(beam_width=2), split, teacher, cache_dir=cache)
    files = sorted(cache.glob("*.npz"))
    generation = {"beam_width": 2, "prompt": "verb", "verb": "candidates"}
    assert [f.name for f in files] == [cache_path(cache, split, generation).name]
    assert files[0].name.startswith("seqkd-train-")
    stamp = files[0].stat().st_mtime_ns
    # the next student (same teacher weights, either mix) reads the file: no teacher forward
    teacher.calls = 0
    again = sequence_level_split(seqkd(beam_width=2), split, teacher, cache_dir=cache)
    inter = sequence_level_split(seqkd(beam_width=2, mix="interpolate"), split, teacher, cache_dir=cache)
    assert teacher.calls == 0 and files[0].stat().st_mtime_ns == stamp
    assert torch.equal(again.x, first.x) and len(inter) == 3
    # other generation options or other data: another file name
    sequence_level_split(seqkd(beam_width=3), split, teacher, cache_dir=cache)
    sequence_level_split(seqkd(beam_width=2, verb="free"), split, teacher, cache_dir=cache)
    other = split.subset(torch.tensor([0, 1]))
    sequence_level_split(seqkd(beam_width=2), other, teacher, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 4
    # same name, another teacher (a stale file): recomputed, with a warning
    changed = bigram({**TEACHER_ROWS, 4: {2: 0.7, 3: 0.1}})  # after 4: singular now
    with caplog.at_level(logging.WARNING, logger="biaskd"):
        fresh = sequence_level_split(seqkd(beam_width=2), split, changed, cache_dir=cache)
    assert "another teacher" in caplog.text and changed.calls > 0
    assert first.x[0, 2].item() == 3 and fresh.x[0, 2].item() == 2 and files[0].stat().st_mtime_ns != stamp
    # a truncated file: recomputed, with a warning
    files[0].write_bytes(files[0].read_bytes()[:40])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="biaskd"):
        repaired = sequence_level_split(seqkd(beam_width=2), split, changed, cache_dir=cache)
    assert "unreadable" in caplog.text and torch.equal(repaired.x, fresh.x)


# -- config ----------------------------------------------------------------------------------------------
from tiny import TINY_LM  # noqa: E402  (the tiny LM task and models)


def test_seqkd_config_validates_in_the_lm_setup_only(compose_tiny, tmp_path):
    assert "seqkd" in OBJECTIVES
    cfg = compose_tiny(*TINY_LM, "distill=cross", "objective=seqkd")
    config_mod.validate(cfg)
    check_lm_config(cfg)
    assert is_sequence_level(cfg.distill) and not is_sequence_level(compose_tiny(*TINY_LM, "distill=cross").distill)
    assert objective_options(cfg.distill) == {"beam_width": 5, "prompt": "verb", "prompt_tokens": 2, "verb": "candidates",
                                                "mix": "teacher"}
    assert cfg.distill.mode == "cross" and cfg.distill.alpha == 1.0
    assert "-cross-seqkd-from-lstm-" in run_name(cfg, "abc", "lm")
    config_mod.validate(compose_tiny(*TINY_LM, "distill=self", "objective=seqkd", "distill.seqkd.mix=interpolate",
                                     "distill.seqkd.prompt=tokens", "distill.alpha=0.5"))
    # the classification setup: one clear ConfigError, before any (teacher) training
    for overrides in (["distill=cross", "objective=seqkd"],
                      [*TINY_LM, "distill=cross", "objective=seqkd", "task.setup=classification"]):
        with pytest.raises(ConfigError, match=r"seqkd.*task\.setup=lm"):
            config_mod.validate(compose_tiny(*overrides))
    with pytest.raises(ConfigError, match="task.setup=lm"):
        biaskd.run.train.train(compose_tiny("distill=cross", "objective=seqkd"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("COMPLETE"))
    # options are checked and named
    for bad, key in (("distill.seqkd.beam_width=0", "beam_width"), ("distill.seqkd.prompt=subject", "prompt"),
                     ("distill.seqkd.mix=union", "mix"),
                     ("distill.seqkd.verb=any", "verb"), ("distill.seqkd.prompt_tokens=1.5", "prompt_tokens")):
        with pytest.raises(ConfigError, match=rf"distill\.seqkd\.{key}"):
            config_mod.validate(compose_tiny(*TINY_LM, "distill=cross", "objective=seqkd", bad))
    with pytest.raises(ConfigError, match=r"beam_width.*interpolate"):
        config_mod.validate(compose_tiny(*TINY_LM, "distill=cross", "objective=seqkd", "distill.seqkd.mix=interpolate",
                                         "distill.seqkd.beam_width=1"))
    with pytest.raises(ConfigError, match=r"distill\.seqkd\.width"):
        check_config({"objective": "seqkd", "seqkd": {"width": 3}})
    # online: there is no trained teacher to generate from
    with pytest.raises(ConfigError, match="mode=online"):
        check_lm_config(compose_tiny(*TINY_LM, "distill=online", "objective=seqkd"))
    # the LM experiment's grid takes it as one more objective (biaskd -m experiment=sva_lm_main objective=kd,seqkd)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        grid = compose("config", overrides=["experiment=sva_lm_main", "distill=cross", "objective=seqkd",
                                            f"runs_dir={tmp_path}"])
    config_mod.validate(grid)
    assert grid.task.setup == "lm" and grid.distill.objective == "seqkd"


def test_sequence_level_module_trains_the_student_without_a_teacher(compose_tiny):
    cfg = compose_tiny(*TINY_LM, "distill=cross", "objective=seqkd", "distill.alpha=0.25")
    data = build_data(cfg)
    teacher, student = lm(5, data.vocab_size), lm(6, data.vocab_size)
    with pytest.raises(ValueError, match="not a sequence-level KD split"):
        sequence_level_module(cfg, student, data, data.train)
    fit = sequence_level_split(OmegaConf.to_container(cfg.distill, resolve=True), data.train, teacher)
    assert len(fit) == 2 * len(data.train)
    module = sequence_level_module(cfg, student, data, fit)
    assert module.frozen is None and not module.online and module.alpha == 0.25
    assert not any(k.startswith("teacher") for k in module.state_dict())
    batch = {"x": fit.x[:4], "y": fit.y[:4], "idx": torch.arange(4)}  # teacher rows only: weight 2 * .25
    inputs, targets, mask = shift(batch["x"])
    ce = torch.nn.functional.cross_entropy(student.lm_logits(inputs).transpose(1, 2), targets, reduction="none")[mask].mean()
    assert module.loss_step(batch, 0).item() == pytest.approx(0.5 * ce.item(), rel=1e-5)
    # a split built for another alpha is refused
    pure = sequence_level_split({**OmegaConf.to_container(cfg.distill, resolve=True), "alpha": 1.0}, data.train, teacher)
    with pytest.raises(ValueError, match="alpha"):
        sequence_level_module(cfg, student, data, pure)
    # alpha = 1: plain next-token CE on the teacher's sentences
    cfg1 = compose_tiny(*TINY_LM, "distill=cross", "objective=seqkd")
    plain = sequence_level_module(cfg1, student, data, pure)
    assert plain._sources is None and plain.loss_step(batch, 0).item() == pytest.approx(ce.item(), rel=1e-5)


# -- end to end -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_seqkd_lm_run_end_to_end(compose_tiny):
    """LSTM teacher -> causal Transformer student with objective=seqkd through biaskd.run.train.train."""
    cfg = compose_tiny(*TINY_LM, "distill=cross", "objective=seqkd", "distill.seqkd.beam_width=2")
    run = biaskd.run.train.train(cfg)
    meta = run.meta
    assert meta["setup"] == "lm" and meta["objective"] == "seqkd" and meta["teacher_model"] == "lstm"
    assert meta["objective_options"] == {"beam_width": 2, "prompt": "verb", "prompt_tokens": 2, "verb": "candidates",
                                         "mix": "teacher"}
    assert "-cross-seqkd-from-lstm-" in run.path.name
    data = build_data(cfg)
    for name, m in run.metrics["splits"].items():
        assert 1 < m["perplexity"] < data.vocab_size, name
    cached = sorted((run.teacher_dir / "teacher_cache").glob("seqkd-*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    # a Seq-Inter student of the same teacher reads the same generated sequences
    inter = biaskd.run.train.train(compose_tiny(*TINY_LM, "distill=cross", "objective=seqkd", "distill.seqkd.beam_width=2",
                                            "distill.seqkd.mix=interpolate"))
    assert inter.path != run.path and RunDir(inter.path).is_complete
    assert sorted((run.teacher_dir / "teacher_cache").glob("seqkd-*.npz")) == cached
    assert cached[0].stat().st_mtime_ns == stamp
