"""The LM setup of the agreement scenario: loss, verb-position scoring, word-level KD, the driver."""
import copy
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from biaskd.data.base import Split
from biaskd.data.build import build_data
from biaskd.errors import ConfigError
from biaskd.metrics import split_metrics
from biaskd.models import build_model
from biaskd.models.sequence import LSTMEncoder
from biaskd.modules.distill import FrozenTeacher
from biaskd.modules.lm import LMModule, VerbTargets, lm_scores, verb_logits, verb_prefix
from biaskd.objectives.kd import SoftTargets
from biaskd.record.artifacts import RunDir
from biaskd.run.predict import evaluate
from biaskd.run.rebuild import load_model
from biaskd.run.train import train
from tiny import TINY_LM as TINY_LM_2_EPOCHS

# modules are called directly here, without a Trainer to log to
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

V = 6  # tokens 0 (pad) .. 5


class Bigram(nn.Module):
    """An LM whose next-token logits at position t are ``table[x_t]``: known by construction."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(probs.log())

    def lm_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x]


def bigram(rows: dict[int, dict[int, float]]) -> Bigram:
    """Row a: P(next | a); unspecified mass spread evenly over the other tokens."""
    p = torch.full((V, V), 1.0 / V)
    for a, nxt in rows.items():
        rest = (1.0 - sum(nxt.values())) / (V - len(nxt))
        p[a] = torch.tensor([nxt.get(b, rest) for b in range(V)])
    return Bigram(p)


def test_lm_loss_is_mean_next_token_nll_over_non_pad_targets():
    model = bigram({1: {2: 0.5}, 2: {3: 0.25, 1: 0.5}})
    x = torch.tensor([[1, 2, 3, 0], [2, 1, 0, 0]])  # targets 1->2, 2->3 | 2->1; pads do not count
    module = LMModule(model)
    loss = module.loss_step({"x": x, "y": torch.zeros(2, dtype=torch.long), "idx": torch.arange(2)}, 0)
    expected = (math.log(2) + math.log(4) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the same targets give the split's perplexity: exp(mean NLL) = 2^(4/3)
    split = Split("s", x, torch.zeros(2, dtype=torch.long), torch.arange(2),
                  meta={"verb_pos": np.array([2, 1]), "correct_id": np.array([3, 1]), "wrong_id": np.array([4, 5])})
    assert lm_scores(model, split, batch_size=1).perplexity == pytest.approx(2 ** (4 / 3), rel=1e-6)


def test_verb_position_logits_are_singular_plural_and_give_agreement_accuracy(tmp_path):
    # verb forms: 3 = singular, 4 = plural; the model's preference after token a is row a
    model = bigram({1: {3: 0.6, 4: 0.1}, 2: {3: 0.1, 4: 0.3}, 5: {3: 0.2, 4: 0.2}})
    x = torch.tensor([
        [1, 3, 5, 0],   # singular subject, verb at 1: P(3|1)=.6 > P(4|1)=.1 -> right
        [5, 1, 4, 0],   # plural, verb at 2, read after token 1 -> prefers singular -> wrong
        [5, 2, 4, 2],   # plural, verb at 2, read after token 2 -> prefers plural -> right
        [2, 3, 0, 0],   # singular, verb at 1, read after token 2 -> prefers plural -> wrong
    ])
    y = torch.tensor([0, 1, 1, 0])
    verb_pos = np.array([1, 2, 2, 1])
    correct = np.where(y.numpy() == 0, 3, 4)
    wrong = np.where(y.numpy() == 0, 4, 3)
    split = Split("test", x, y, torch.tensor([10, 11, 12, 13]),
                  meta={"verb_pos": verb_pos, "correct_id": correct, "wrong_id": wrong,
                        "attractors": np.array([0, 1, 1, 0]), "homogeneous": np.ones(4, dtype=int)})
    scores = lm_scores(model, split, batch_size=3)
    # column 0 = log P(singular form), column 1 = log P(plural form), whatever the label
    expected = np.log([[0.6, 0.1], [0.6, 0.1], [0.1, 0.3], [0.1, 0.3]])
    np.testing.assert_allclose(scores.verb_logits.numpy(), expected, rtol=1e-5)
    m = split_metrics(scores.verb_logits, y, split.meta)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["accuracy_by_attractors"] == {"0": 0.5, "1": 0.5}
    # the driver writes the same per-example outputs as classification runs, plus perplexity
    data = SimpleNamespace(evals={"test": split}, setup_kind="lm")
    results = evaluate(model, data, RunDir(tmp_path / "run"))
    assert results["test"]["accuracy"] == pytest.approx(0.5) and results["test"]["perplexity"] > 1
    out = RunDir(tmp_path / "run").outputs("test")
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5)
    assert out["labels"].tolist() == [0, 1, 1, 0] and out["ids"].tolist() == [10, 11, 12, 13]
    assert out["meta_verb_pos"].tolist() == [1, 2, 2, 1]


def test_scoring_in_row_chunks_changes_nothing(monkeypatch):
    import biaskd.modules.lm as lm

    torch.manual_seed(0)
    model = LSTMEncoder(V, 0, d_model=8, dropout=0.0, lm_head=True)
    x = torch.randint(1, V, (7, 5))
    x[2, 3:] = 0
    x[5, 2:] = 0
    split = Split("s", x, torch.randint(0, 2, (7,)), torch.arange(7),
                  meta={"verb_pos": np.array([1, 2, 2, 4, 1, 1, 1]), "correct_id": np.full(7, 3),
                        "wrong_id": np.full(7, 4)})
    whole = lm_scores(model, split)
    monkeypatch.setattr(lm, "SCORE_LOGITS", 2 * 5 * V)  # two rows per forward
    chunked = lm_scores(model, split, batch_size=3)
    torch.testing.assert_close(chunked.verb_logits, whole.verb_logits)
    assert chunked.n_tokens == whole.n_tokens == 5 * 4 + 2 + 1  # pads are not targets
    assert chunked.perplexity == pytest.approx(whole.perplexity, rel=1e-6)


def test_verb_prefix_features_are_the_state_before_the_verb():
    torch.manual_seed(0)
    model = LSTMEncoder(V, 0, d_model=8, dropout=0.0, lm_head=True).eval()
    x = torch.tensor([[1, 2, 3, 4, 5], [2, 3, 0, 0, 0], [5, 4, 3, 2, 0]])
    verb_pos = np.array([3, 1, 2])
    split = Split("p", x, torch.zeros(3, dtype=torch.long), torch.arange(3), meta={"verb_pos": verb_pos})
    prefix = verb_prefix(split)
    assert prefix.x.tolist() == [[1, 2, 3], [2, 0, 0], [5, 4, 0]]
    with torch.no_grad():
        states = model.token_features(x)[torch.arange(3), torch.as_tensor(verb_pos) - 1]
        torch.testing.assert_close(model.features(prefix.x), states)


def test_word_level_kd_is_zero_when_student_is_teacher():
    torch.manual_seed(0)
    student = LSTMEncoder(V, 0, d_model=8, dropout=0.0, lm_head=True)
    x = torch.tensor([[1, 2, 3, 4], [5, 3, 0, 0]])
    batch = {"x": x, "y": torch.zeros(2, dtype=torch.long), "idx": torch.arange(2)}
    same = LMModule(student, teacher=FrozenTeacher(copy.deepcopy(student)), objective=SoftTargets(2.0))
    assert same.loss_step(batch, 0).item() == pytest.approx(0.0, abs=1e-6)
    # alpha < 1 leaves exactly the (1 - alpha) share of the LM loss
    half = LMModule(student, teacher=FrozenTeacher(copy.deepcopy(student)), objective=SoftTargets(), alpha=0.5)
    ce = LMModule(student).loss_step(batch, 0).item()
    assert half.loss_step(batch, 0).item() == pytest.approx(0.5 * ce, rel=1e-5)
    other = LSTMEncoder(V, 0, d_model=8, dropout=0.0, lm_head=True)
    assert LMModule(student, teacher=FrozenTeacher(other), objective=SoftTargets()).loss_step(batch, 0).item() > 1e-4
    # the frozen teacher is not module state; an online teacher is, and it learns the LM loss too
    assert not any(k.startswith("teacher") for k in same.state_dict())
    learner = LSTMEncoder(V, 0, d_model=8, dropout=0.0, lm_head=True)
    online = LMModule(student, teacher=learner, online=True, objective=SoftTargets())
    assert any(k.startswith("teacher.") for k in online.state_dict())
    online.loss_step(batch, 0).backward()
    assert learner.lm_head.weight.grad is not None and student.lm_head.weight.grad is not None


TINY_LM = [*TINY_LM_2_EPOCHS, "trainer.max_epochs=3"]


@pytest.mark.slow
def test_lstm_to_causal_transformer_lm_run_end_to_end(compose_tiny, caplog):
    cfg = compose_tiny(*TINY_LM, "distill=cross")
    with caplog.at_level(logging.INFO, logger="biaskd"):
        run = train(cfg)
    assert "teacher_outputs=forward" in caplog.text  # cached per-token logits fall back to forward
    for name in ["COMPLETE", "meta.json", "config.yaml", "metrics.json", "model.pt", "checkpoints/last.ckpt",
                 "features/final.npz", "features/step_000000000.npz", "outputs/test.npz", "outputs/attractors_2.npz"]:
        assert (run / name).exists(), name
    meta = run.meta
    assert meta["setup"] == "lm" and meta["distill"] == "cross" and meta["teacher_model"] == "lstm"
    assert run.path.name.startswith("sva_lm-transformer_seq-cross-from-lstm-")
    data = build_data(cfg)
    assert sorted(run.metrics["splits"]) == sorted(data.evals)
    for name, m in run.metrics["splits"].items():
        assert 1 < m["perplexity"] < data.vocab_size and m["n_tokens"] > 0  # better than uniform
        out = run.outputs(name)
        assert out["logits"].shape == (len(data.evals[name]), 2)
        acc = float((out["logits"].argmax(1) == out["labels"]).mean())
        assert acc == pytest.approx(m["accuracy"])
    feats = run.features()
    assert feats["features"].shape == (40, 16) and len(feats["ids"]) == 40
    # the teacher is an LM run too, and its model rebuilds from its run dir
    teacher = run.teacher_dir
    assert teacher.meta["setup"] == "lm" and teacher.metrics["splits"]["test"]["perplexity"] < 0.75 * data.vocab_size
    tmodel = load_model(teacher, data)
    assert tmodel.classifier is None and tmodel.lm_logits(data.valid.x[:2]).shape[-1] == data.vocab_size
    assert not list((teacher.path / "teacher_cache").glob("*.npz"))


def test_bidirectional_model_in_lm_setup_is_one_config_error_before_training(compose_tiny, tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match="cannot be a language model"):
        train(compose_tiny(*TINY_LM, "model=transformer"))
    # a bidirectional teacher fails before the teacher is trained
    with pytest.raises(ConfigError, match="'transformer'.*cannot be a language model"):
        train(compose_tiny(*TINY_LM, "distill=cross", "model@teacher.model=transformer"))
    # so does an objective other than word-level KD
    with pytest.raises(ConfigError, match="word-level KD"):
        train(compose_tiny(*TINY_LM, "distill=cross", "distill.objective=logits_mse", "distill.alpha=0.5"))
    assert not runs.exists() or not any(runs.rglob("COMPLETE"))
    # causal=true makes the same class a language model; classification keeps its classifier
    data = build_data(compose_tiny(*TINY_LM))
    lm = build_model({"name": "t", "_target_": "biaskd.models.sequence.TransformerEncoderModel",
                      "d_model": 8, "nhead": 2, "num_layers": 1, "causal": True, "tie_embeddings": True}, data)
    assert lm.classifier is None and lm.lm_head.weight is lm.embedding.weight


def test_lm_experiment_recipe_composes_for_both_agreement_tasks(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from biaskd.tools.cli import CONF_DIR

    for task in ("sva", "sva_linzen"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=["experiment=sva_lm_main", f"task={task}", "distill=cross"])
        assert cfg.task.name == task and cfg.task.setup == "lm"
        assert cfg.model.causal and cfg.model.name == "transformer_seq" and cfg.teacher.model.name == "lstm"
