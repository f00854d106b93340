"""A tiny teacher -> distilled student run that writes complete run dirs."""
import json

import lightning as L
import numpy as np
import pytest
import torch

import biaskd.run.train
from biaskd.data.build import build_data
from biaskd.models import build_model
from biaskd.record import artifacts
from biaskd.record.artifacts import RunDir
from biaskd.run.predict import predict_logits
from biaskd.run.rebuild import load_model
from biaskd.run.train import train

EXPECTED_FILES = ["COMPLETE", "meta.json", "config.yaml", "metrics.json", "model.pt",
                  "outputs/test.npz", "outputs/shifted.npz", "features/final.npz",
                  "features/step_000000000.npz", "checkpoints/last.ckpt"]


def test_cross_distillation_writes_complete_run_dirs(compose_tiny):
    run = train(compose_tiny("distill=cross"))
    for name in EXPECTED_FILES:
        assert (run / name).exists(), name
    meta = run.meta
    assert meta["distill"] == "cross" and meta["teacher_model"] == "cnn_small" and meta["role"] == "student"
    assert meta["temperature"] == 2.0 and meta["alpha"] == 1.0 and meta["seed"] == 1
    assert meta["data"]["sizes"] == {"train": 256, "valid": 128, "test": 128, "shifted": 128}
    teacher = run.teacher_dir
    assert teacher.is_complete and teacher.meta["role"] == "teacher" and teacher.meta["seed"] == 101
    # cached teacher logits on the training set, stored with the teacher
    caches = list((teacher.path / "teacher_cache").glob("train-*.npz"))
    assert len(caches) == 1
    cached = artifacts.load_npz(caches[0])
    assert cached["logits"].shape == (256, 4)
    # the cache equals the teacher's outputs recomputed now
    from biaskd.config import teacher_config
    tmodel = load_model(teacher)
    data = build_data(teacher_config(run_cfg := compose_tiny("distill=cross")))
    with torch.no_grad():
        np.testing.assert_allclose(tmodel(data.train.x).numpy(), cached["logits"], rtol=1e-5, atol=1e-5)
    # per-example outputs agree with metrics.json
    out = run.outputs("test")
    acc = float((out["logits"].argmax(1) == out["labels"]).mean())
    assert acc == pytest.approx(run.metrics["splits"]["test"]["accuracy"])
    assert "meta_severity" in out
    feats = run.features()
    assert feats["features"].shape == (64, 32) and len(feats["ids"]) == 64


def test_same_seed_gives_identical_metrics(compose_tiny, tmp_path):
    a = train(compose_tiny("distill=self", runs_dir=tmp_path / "a"))
    b = train(compose_tiny("distill=self", runs_dir=tmp_path / "b"))
    assert a.metrics["splits"] == b.metrics["splits"]
    assert a.path.name == b.path.name  # same config hash
    c = train(compose_tiny("distill=self", "seed=2", runs_dir=tmp_path / "b"))
    assert c.metrics["splits"] != a.metrics["splits"]


def test_complete_run_is_skipped(compose_tiny):
    run = train(compose_tiny())
    stamp = (run / "COMPLETE").stat().st_mtime_ns
    again = train(compose_tiny())
    assert again.path == run.path and (run / "COMPLETE").stat().st_mtime_ns == stamp


def test_teacher_is_trained_once_and_reused(compose_tiny):
    s1 = train(compose_tiny("distill=cross"))
    t_stamp = (s1.teacher_dir / "COMPLETE").stat().st_mtime_ns
    s2 = train(compose_tiny("distill=cross", "distill.temperature=4.0"))
    assert s2.path != s1.path
    assert s2.meta["teacher_run"] == s1.meta["teacher_run"]
    assert (s2.teacher_dir / "COMPLETE").stat().st_mtime_ns == t_stamp


class TeacherSnapshots(L.Callback):
    """The online teacher's weights when training starts and when it ends."""

    def on_fit_start(self, trainer, pl_module):
        self.initial = {k: v.detach().clone() for k, v in pl_module.teacher.state_dict().items()}

    def on_train_end(self, trainer, pl_module):
        self.final = {k: v.detach().clone() for k, v in pl_module.teacher.state_dict().items()}


def test_online_distillation_trains_both(compose_tiny, monkeypatch):
    snapshots = TeacherSnapshots()
    make_trainer = biaskd.run.train.make_trainer

    def make_trainer_with_snapshots(*args, **kwargs):
        trainer = make_trainer(*args, **kwargs)
        trainer.callbacks.append(snapshots)
        return trainer

    monkeypatch.setattr(biaskd.run.train, "make_trainer", make_trainer_with_snapshots)
    cfg = compose_tiny("distill=online", "trainer.max_epochs=10")  # 4 classes: chance is 0.25
    run = train(cfg)
    assert run.is_complete and run.meta["distill"] == "online"
    # the teacher learned: every weight moved from its initialisation ...
    initial, final = snapshots.initial, snapshots.final
    assert all(not torch.equal(initial[k], final[k]) for k in final), "an online teacher weight did not change"
    # ... its final weights are the ones in the run's Lightning checkpoint ...
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in final.items():
        torch.testing.assert_close(saved[f"teacher.{k}"], v)
    # ... and both models are well above chance on the test split
    data = build_data(cfg)
    teacher = build_model(cfg.teacher.model, data)
    teacher.load_state_dict(final)
    test = data.evals["test"]
    teacher_acc = float((predict_logits(teacher.eval(), test.x).argmax(1) == torch.as_tensor(test.y)).float().mean())
    assert teacher_acc > 0.6
    assert run.metrics["splits"]["test"]["accuracy"] > 0.5


def test_wandb_offline_run_dir_holds_logged_metrics(compose_tiny, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.delenv("WANDB_DATA_DIR")  # as a user has it: W&B's default is under the home folder
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = train(compose_tiny("logger=wandb", "distill=cross"))
    # the files W&B stages for the tables stay in the run dir, none under ~/.local/share/wandb
    assert not (tmp_path / "home" / ".local" / "share" / "wandb").exists()
    assert any((run.path / "wandb" / "artifacts" / "staging").iterdir())
    offline = list((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    # the offline run file holds the logged per-split metrics (key and JSON value) ...
    record = next(offline[0].glob("run-*.wandb")).read_bytes()
    acc = run.metrics["splits"]["test"]["accuracy"]
    assert b"test/accuracy" in record and json.dumps(acc).encode() in record
    assert b"valid/accuracy" in record
    # ... and the per-example prediction tables, one row per test example
    table = json.loads(next((offline[0] / "files" / "media" / "table" / "predictions").glob("test_*.table.json")).read_text())
    assert table["columns"][:5] == ["id", "image", "label", "prediction", "confidence"]
    assert len(table["data"]) == run.metrics["splits"]["test"]["n"]
    # the comparison with the teacher: no column without a value in it
    (agreement,) = (offline[0] / "files" / "media" / "table" / "teacher").glob("agreement_*.table.json")
    agreement = json.loads(agreement.read_text())
    for i, column in enumerate(agreement["columns"]):
        assert any(row[i] is not None for row in agreement["data"]), column
    # teacher and student are separate W&B runs
    teacher_runs = list((run.teacher_dir.path / "wandb").glob("offline-run-*"))
    assert len(teacher_runs) == 1


def test_teacher_link_survives_moving_the_sweep_folder(compose_tiny, tmp_path):
    import shutil
    run = train(compose_tiny("distill=cross"))
    assert not run.meta["teacher_run"].startswith("/")
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "runs", moved)
    shutil.rmtree(tmp_path / "runs")
    copy = RunDir(moved / run.path.parent.name / run.path.name)
    assert copy.teacher_dir.is_complete and copy.teacher_dir.meta["role"] == "teacher"


def test_length_sorted_prediction_equals_plain_batches():
    from biaskd.models.sequence import LSTMEncoder
    torch.manual_seed(0)
    model = LSTMEncoder(vocab_size=20, num_classes=2, d_model=8).eval()
    lengths = torch.randint(1, 12, (50,))
    x = torch.zeros(50, 12, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(1, 20, (int(n),))
    with torch.no_grad():
        plain = torch.cat([model(x[i:i + 7]) for i in range(0, 50, 7)])
    torch.testing.assert_close(predict_logits(model, x, batch_size=7), plain, rtol=1e-5, atol=1e-6)


def test_torch_compile_option_trains_and_saves_plain_weights(compose_tiny):
    run = train(compose_tiny("train.compile=true", "trainer.max_epochs=1"))
    model = load_model(run)  # plain keys: loads into an uncompiled model
    assert run.is_complete and (run / "features" / "step_000000000.npz").exists()
    assert not any(k.startswith("_orig_mod") for k in run.state_dict(0))
    out = run.outputs("test")
    with torch.no_grad():
        data = build_data(__import__("omegaconf").OmegaConf.load(run / "config.yaml"))
        np.testing.assert_allclose(model(data.evals["test"].x).numpy(), out["logits"], rtol=1e-4, atol=1e-5)


def test_init_from_continues_a_distilled_student_without_its_teacher(compose_tiny):
    student = train(compose_tiny("distill=cross"))
    drift = train(compose_tiny("distill=none", f"train.init_from={student.path}", "trainer.max_epochs=1"))
    assert drift.is_complete and drift.meta["init_from"] and drift.meta["teacher_run"] is None
    # step 0 of the continuation is the student's final model
    np.testing.assert_allclose(drift.features(0)["features"], student.features()["features"], rtol=1e-5, atol=1e-6)
    from biaskd.errors import ArtifactError, ConfigError
    with pytest.raises(ConfigError, match="train.init_from"):
        train(compose_tiny("model=cnn_small", f"train.init_from={student.path}"))
    (student / "COMPLETE").unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        train(compose_tiny("distill=none", f"train.init_from={student.path}", "seed=5"))


def test_distilled_run_records_what_its_soft_targets_carried(compose_tiny):
    from biaskd.config import teacher_config
    from biaskd.metrics import teacher_signal

    cfg = compose_tiny("distill=cross", "distill.temperature=3.0")
    run = train(cfg)
    signal = run.metrics["teacher_signal"]
    assert set(signal) == {"train"}  # no transfer inputs in this run
    data = build_data(teacher_config(cfg))
    z = predict_logits(load_model(run.teacher_dir), data.train.x).double()
    p = torch.softmax(z / 3.0, dim=1)
    assert signal["train"]["n"] == 256 and signal["train"]["temperature"] == 3.0
    assert signal["train"]["p_gold"] == pytest.approx(float(p[torch.arange(256), data.train.y].mean()), abs=1e-6)
    assert signal["train"]["entropy"] == pytest.approx(float(-(p * p.log()).sum(1).mean()), abs=1e-6)
    assert signal["train"]["top_not_gold"] == pytest.approx(float((z.argmax(1) != data.train.y).double().mean()))
    assert teacher_signal([[0.0, 0.0]], [1])["p_gold"] == 0.5  # two equal logits: p = 1/2, by hand
