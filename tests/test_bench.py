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
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
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
    for key in ("kd_cached_vs_student", "kd_teacher_forward_vs_student", "lightning_vs_plain"):
        r = res["benchmarks"][key]["tiny"]
        assert r["ratio"] > 0 and r["a_median"] > 0 and r["b_median"] > 0
    assert "lightning_vs_plain" in (tmp_path / "bench.md").read_text()
