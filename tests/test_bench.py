"""The benchmark (biaskd.bench) and the per-step fast paths it measures: the direct
backward/optimizer step of ClassifierModule must train exactly as Lightning's manual_backward /
LightningOptimizer.step path, and logged training losses belong to the step they are logged for."""
import csv
import json
import logging
import warnings

import lightning as L
import pytest
import torch

from biaskd import bench
from biaskd.data.base import Split, TensorBatches
from biaskd.models.vision import MLP
from biaskd.modules.classifier import ClassifierModule
from biaskd.modules.distill import DistillModule


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _split(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split("train", torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                 torch.arange(n))


class _Data(L.LightningDataModule):
    def __init__(self, split, batch_size=32):
        super().__init__()
        self.split, self.batch_size = split, batch_size

    def train_dataloader(self):
        return TensorBatches(self.split, self.batch_size, seed=0)


class _Slow(ClassifierModule):
    """The same module forced onto Lightning's manual_backward / LightningOptimizer.step path."""

    def _can_step_directly(self):
        return False


class _Grads(L.Callback):
    """A callback that reads gradients after backward: the direct path must not skip it."""

    def __init__(self):
        self.calls = 0

    def on_after_backward(self, trainer, pl_module):
        self.calls += 1


def _fit(module, split, epochs=2, callbacks=(), **kw):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), **kw)
    trainer.fit(module, datamodule=_Data(split))
    return trainer


@pytest.mark.parametrize("lr_schedule, grad_clip", [("constant", None), ("cosine", 0.5)])
def test_direct_step_trains_exactly_like_lightnings_path(lr_schedule, grad_clip):
    split = _split()
    torch.manual_seed(0)
    fast = ClassifierModule(MLP(hidden=(32,)), lr_schedule=lr_schedule, grad_clip=grad_clip)
    slow = _Slow(MLP(hidden=(32,)), lr_schedule=lr_schedule, grad_clip=grad_clip)
    slow.model.load_state_dict(fast.model.state_dict())
    t_fast, t_slow = _fit(fast, split), _fit(slow, split)
    assert fast._direct_step and not slow._direct_step
    assert t_fast.global_step == t_slow.global_step == 2 * 7
    for a, b in zip(fast.model.state_dict().values(), slow.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_direct_step_is_off_when_a_callback_hooks_backward():
    grads = _Grads()
    module = ClassifierModule(MLP(hidden=(32,)))
    trainer = _fit(module, _split(), epochs=1, callbacks=[grads])
    assert not module._direct_step
    assert grads.calls == trainer.global_step == 7


def test_distill_module_uses_the_direct_step_and_matches_lightnings_path():
    split = _split()
    table = torch.randn(len(split), 10)

    class SlowDistill(DistillModule):
        def _can_step_directly(self):
            return False

    torch.manual_seed(0)
    fast = DistillModule(MLP(hidden=(32,)), teacher_logits=table, temperature=2.0, alpha=0.5)
    slow = SlowDistill(MLP(hidden=(32,)), teacher_logits=table, temperature=2.0, alpha=0.5)
    slow.model.load_state_dict(fast.model.state_dict())
    _fit(fast, split), _fit(slow, split)
    assert fast._direct_step
    for a, b in zip(fast.model.state_dict().values(), slow.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_logged_train_loss_is_the_loss_of_the_step_it_is_written_for(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    class Recording(ClassifierModule):
        def train_on_batch(self, batch, batch_idx):
            loss = super().train_on_batch(batch, batch_idx)
            self.seen.append(float(loss))
            return loss

    module = Recording(MLP(hidden=(32,)))
    module.seen = []
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=CSVLogger(tmp_path), log_every_n_steps=3,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=_Data(_split()))
    rows = [r for r in csv.DictReader(open(f"{trainer.logger.log_dir}/metrics.csv")) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [2, 5, 8, 11]
    for r in rows:
        assert float(r["train/loss"]) == pytest.approx(module.seen[int(r["step"])], rel=1e-6)


def test_bench_quick_writes_ratios(tmp_path, monkeypatch):
    # a tiny stand-in scenario: the real ones take minutes; this checks the plumbing and the output
    split = _split(256)

    def pair(name):
        teacher = MLP(hidden=(16,))
        return split, (lambda: MLP(hidden=(32,))), teacher, 32, None

    monkeypatch.setattr(bench, "scenario_pair", pair)
    monkeypatch.setattr(bench, "bench_cka", lambda n, d, repeats: {"ratio": 0.1, "fast_s": 0.01, "naive_s": 0.1,
                                                                      "fast": 0.5, "naive": 0.5, "abs_diff": 0.0,
                                                                      "n": n, "d": d})
    bench.main(["--quick", "--scenarios", "tiny", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench.json").read_text())
    for key in ("kd_cached_vs_student", "kd_teacher_forward_vs_student", "lightning_vs_plain", "run_trainer_vs_plain"):
        r = res["benchmarks"][key]["tiny"]
        assert r["ratio"] > 0 and r["a_median"] > 0 and r["b_median"] > 0
    assert "lightning_vs_plain" in (tmp_path / "bench.md").read_text()


def test_throttled_progress_bar_redraws_at_most_every_interval_and_on_the_last_batch(monkeypatch):
    from lightning.pytorch.callbacks import TQDMProgressBar

    from biaskd.modules import callbacks

    drawn = []
    monkeypatch.setattr(TQDMProgressBar, "on_train_batch_end", lambda self, tr, m, out, b, i: drawn.append(i))
    monkeypatch.setattr(callbacks.ThrottledProgressBar, "total_train_batches", property(lambda self: 6))
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    bar = callbacks.ThrottledProgressBar(interval=1.0)
    for i, t in enumerate([0.0, 0.3, 0.9, 1.0, 1.5, 1.6]):
        clock[0] = t
        bar.on_train_batch_end(None, None, None, None, i)
    assert drawn == [0, 3, 5]  # t=0, t=1.0 (an interval later), and batch 6 of 6


def test_run_trainer_uses_the_throttled_bar_only_when_the_bar_is_enabled(tmp_path):
    from biaskd.artifacts import RunDir
    from biaskd.modules.callbacks import ThrottledProgressBar
    from biaskd.train import make_trainer

    tcfg = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_model_summary": False}
    probe = _split(8)
    on = make_trainer({**tcfg, "enable_progress_bar": True}, RunDir(tmp_path / "a"), False, probe, [])
    off = make_trainer({**tcfg, "enable_progress_bar": False}, RunDir(tmp_path / "b"), False, probe, [])
    assert type(on.progress_bar_callback) is ThrottledProgressBar
    assert off.progress_bar_callback is None
    assert not any(isinstance(cb, ThrottledProgressBar) for cb in off.callbacks)


def test_round_robin_alternates_the_order_and_pairs_ratios_within_rounds():
    order = []
    calls = {"a": iter([0, 2.0, 4.0, 6.0]), "b": iter([0, 1.0, 1.0, 2.0])}
    contenders = {k: (lambda k=k: order.append(k) or next(calls[k])) for k in calls}
    out = bench.round_robin(contenders, repeats=3)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, round 1, round 2 reversed, round 3
    assert out == {"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 2.0]}
    r = bench.pair_ratio(out["a"], out["b"])
    assert r["ratio"] == 3.0  # median of 2, 4, 3
    assert r["ratio_of_medians"] == 4.0


class _PerBatch(ClassifierModule):
    """The same module on Lightning's per-batch path: the loop fetches, runs the transfer hooks
    and passes (batch, batch_idx) to training_step."""

    def training_step(self, batch, batch_idx):
        return self.train_on_batch(batch, batch_idx)


def test_dataloader_iter_step_trains_exactly_like_lightnings_per_batch_path():
    split = _split()
    torch.manual_seed(0)
    fast = ClassifierModule(MLP(hidden=(32,)))
    slow = _PerBatch(MLP(hidden=(32,)))
    slow.model.load_state_dict(fast.model.state_dict())
    t_fast, t_slow = _fit(fast, split), _fit(slow, split)
    assert t_fast.global_step == t_slow.global_step == 2 * 7
    assert not fast._batch_hooks  # nothing overridden, CPU batches: next_batch skips the hooks
    for a, b in zip(fast.model.state_dict().values(), slow.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_overridden_batch_transfer_hooks_still_run_on_the_dataloader_iter_step():
    class Hooked(ClassifierModule):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            self.before += 1
            return batch

        def on_after_batch_transfer(self, batch, dataloader_idx):
            self.after += 1
            return {**batch, "x": torch.zeros_like(batch["x"])}  # the step must see the hook's batch

    module = Hooked(MLP(hidden=(32,)))
    module.before = module.after = 0
    seen = []
    module.loss_step = lambda batch, i: seen.append(float(batch["x"].abs().sum())) or ClassifierModule.loss_step(
        module, batch, i)
    trainer = _fit(module, _split(), epochs=1)
    assert module._batch_hooks
    assert module.before == module.after == trainer.global_step == 7
    assert seen == [0.0] * 7


def test_round_robin_warms_up_with_the_short_version_when_given():
    calls = []
    out = bench.round_robin({"a": lambda: calls.append("a") or 1.0}, 2,
                            warmup={"a": lambda: calls.append("a-warm") or 0.0})
    assert calls == ["a-warm", "a", "a"]
    assert out == {"a": [1.0, 1.0]}


def test_round_robin_keeps_neighbours_neighbours():
    order = []
    bench.round_robin({k: (lambda k=k: order.append(k) or 1.0) for k in "abc"}, repeats=3)
    assert "".join(order) == "abc" + "abc" + "cba" + "abc"  # warm-up, then A B B A


def test_measurement_split_takes_a_seeded_subset_only_when_an_epoch_is_longer_than_asked():
    split = _split(100)
    lengths = torch.arange(100)
    sub, sub_len = bench.measurement_split(split, lengths, 10, 1, 5)
    assert len(sub) == 50 and torch.equal(sub_len, sub.ids)  # lengths follow the rows they belong to
    again, _ = bench.measurement_split(split, lengths, 10, 1, 5)
    assert torch.equal(sub.ids, again.ids)
    whole, whole_len = bench.measurement_split(split, lengths, 10, 1, 20)  # 10 steps an epoch: all of it
    assert whole is split and whole_len is lengths


def test_tensor_batches_moved_to_a_device_cut_the_same_batches_there_and_leave_the_split_alone():
    # "meta" stands in for a GPU: shapes (trimmed widths included) must match the CPU batches
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 12, (50,), generator=g)
    x = torch.zeros(50, 12, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        x[i, :n] = 1 + torch.arange(n)
    split = Split("train", x, torch.randint(0, 2, (50,), generator=g), torch.arange(50))
    cpu = list(TensorBatches(split, 8, seed=3, lengths=lengths))
    moved = TensorBatches(split, 8, seed=3, lengths=lengths).to("meta")
    meta = list(moved)
    assert split.x.device.type == "cpu" and moved.split is not split
    assert [b["x"].device.type for b in meta] == ["meta"] * len(cpu)
    assert [tuple(b["x"].shape) for b in meta] == [tuple(b["x"].shape) for b in cpu]
    assert [tuple(b["idx"].shape) for b in meta] == [tuple(b["idx"].shape) for b in cpu]
    assert TensorBatches(split, 8).to("cpu").split is split  # already there: nothing copied
