"""``train.steps_per_call``: several optimizer steps per Lightning ``training_step`` take exactly
the updates of one step per call (same weights, bit for bit, in one process), keep the run's
identity, record the training path at the same steps, and write the CSV log on the optimizer-step
axis."""
import csv

import pytest
import torch

from biaskd.data.base import Split, StepGroups, TensorBatches
from biaskd.errors import ConfigError
from biaskd.run.train import train
from tiny import TINY_LM


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_run(a, b):
    assert a.path.name == b.path.name  # steps_per_call is not part of the identity
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.metrics["splits"] == b.metrics["splits"]
    assert a.metrics["train"]["steps"] == b.metrics["train"]["steps"]
    steps = lambda r: sorted(p.name for p in (r / "features").iterdir())  # noqa: E731
    assert steps(a) == steps(b) and len(steps(a)) > 2


CASES = {
    "independent": [],
    "cross, linear alpha, cosine lr": ["distill=cross", "distill.alpha_schedule=linear", "distill.alpha=0.9",
                                      "train.lr_schedule=cosine"],
    "online": ["distill=online"],
    "self, teacher forward, grad clip": ["distill=self", "distill.teacher_outputs=forward", "train.grad_clip=0.5"],
}


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_grouped_steps_train_the_same_weights(compose_tiny, tmp_path, overrides):
    one = train(compose_tiny(*overrides, "train.steps_per_call=1", runs_dir=tmp_path / "one"))
    three = train(compose_tiny(*overrides, "train.steps_per_call=3", runs_dir=tmp_path / "three"))
    _same_run(one, three)


def test_grouped_steps_train_the_same_lm(compose_tiny, tmp_path):
    one = train(compose_tiny(*TINY_LM, "train.steps_per_call=1", runs_dir=tmp_path / "one"))
    four = train(compose_tiny(*TINY_LM, "train.steps_per_call=4", runs_dir=tmp_path / "four"))
    _same_run(one, four)


def test_csv_log_counts_optimizer_steps(compose_tiny, tmp_path):
    # toy: 4 batches an epoch; groups of 3 are [0 1 2] [3] per epoch; every call is written
    args = ("trainer.max_epochs=2", "trainer.log_every_n_steps=1")
    one = _rows(train(compose_tiny(*args, runs_dir=tmp_path / "one")) / "logs" / "metrics.csv")
    three = _rows(train(compose_tiny(*args, "train.steps_per_call=3", runs_dir=tmp_path / "three"))
                  / "logs" / "metrics.csv")

    def train_rows(rows):
        return {int(r["step"]): (float(r["epoch"]), float(r["train/loss"])) for r in rows if r.get("train/loss")}

    def valid_rows(rows):
        return [(int(r["step"]), float(r["epoch"]), float(r["valid/loss"])) for r in rows if r.get("valid/loss")]

    t1, t3 = train_rows(one), train_rows(three)
    assert sorted(t1) == list(range(8))
    assert sorted(t3) == [2, 3, 6, 7]  # the last step of each call
    assert all(t3[s] == t1[s] for s in t3)  # the same loss at the same step, and its epoch
    assert valid_rows(three) == valid_rows(one) and len(valid_rows(one)) == 2


def test_max_steps_stops_inside_a_group(compose_tiny, tmp_path):
    run = train(compose_tiny("trainer.max_epochs=5", "+trainer.max_steps=5", "train.steps_per_call=3"))
    assert run.metrics["train"]["steps"] == 5


def test_groups_are_the_batches_in_order():
    split = Split("train", torch.arange(10.0)[:, None], torch.zeros(10, dtype=torch.long), torch.arange(10))
    batches = TensorBatches(split, 2, seed=3)
    groups = StepGroups(batches, 2)
    assert len(groups) == 3 and groups.steps_per_epoch == 5
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        flat = [b["idx"].tolist() for b in batches]
        groups.set_epoch(epoch)
        got = [[b["idx"].tolist() for b in g] for g in groups]
        assert [len(g) for g in got] == [2, 2, 1]
        assert [i for g in got for i in g] == flat


@pytest.mark.parametrize("value", ["0", "1.5", "-2"])
def test_bad_steps_per_call_names_the_key(compose_tiny, value):
    with pytest.raises(ConfigError, match="train.steps_per_call"):
        train(compose_tiny(f"train.steps_per_call={value}"))


@pytest.mark.parametrize("key", ["limit_train_batches", "val_check_interval"])
def test_batch_counts_of_the_trainer_are_refused_when_calls_hold_several_batches(compose_tiny, key):
    with pytest.raises(ConfigError, match=f"trainer.{key}' = 3 counts training_step calls"):
        train(compose_tiny("train.steps_per_call=4", f"+trainer.{key}=3"))
