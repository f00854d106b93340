"""A number is a function of its config: teachers trained from their own config, integrity
manifests, one writer per run dir, logs that survive a resume, errors a person reads."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from biaskd import config as config_mod
from biaskd.errors import ArtifactError, ConfigError
from biaskd.record import artifacts
from biaskd.record.artifacts import RunDir
from biaskd.run.rebuild import load_model
from biaskd.run.train import train
from biaskd.tools.rerun import rerun

ENV = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
QUIET = ["trainer.enable_progress_bar=false", "threads=1"]


def flip_bit(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    path.write_bytes(bytes(data))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- a run is a function of its own config ------------------------------------------------------
def test_teacher_trained_for_a_student_equals_its_rerun(compose_tiny, tmp_path):
    # student and teacher differ in seed (offset 100) and batch size (the teacher's override)
    cfg = compose_tiny("distill=cross", "seed=3", "train.batch_size=32", "+teacher.overrides.train.batch_size=16")
    student = train(cfg)
    teacher = student.teacher_dir
    tcfg = OmegaConf.load(teacher / "config.yaml")
    assert tcfg.seed == 103 and tcfg.train.batch_size == 16 and tcfg.task.batch_size == 16
    assert teacher.metrics["train"]["steps"] == 2 * 256 // 16  # the override is applied, not only recorded

    again = rerun(teacher.path, tmp_path / "elsewhere")
    assert again.path.name == teacher.path.name  # same identity
    assert again.path.parent == tmp_path / "elsewhere" / "teachers"
    assert_same_tensors(teacher.state_dict(), again.state_dict())

    student_again = rerun(student.path, tmp_path / "elsewhere")
    assert student_again.path.name == student.path.name
    assert_same_tensors(student.state_dict(), student_again.state_dict())


def test_teacher_max_epochs_is_independent_of_the_student(compose_tiny):
    a = train(compose_tiny("distill=cross", "teacher.max_epochs=1"))
    b = train(compose_tiny("distill=cross", "teacher.max_epochs=1", "trainer.max_epochs=3"))
    assert a.teacher_dir.path == b.teacher_dir.path
    assert a.teacher_dir.metrics["train"]["epochs"] == 1 and b.metrics["train"]["epochs"] == 3


def test_rerun_cli_prints_the_new_run_dir_last(compose_tiny, tmp_path):
    run = train(compose_tiny())
    out = subprocess.run([sys.executable, "-m", "biaskd.rerun", str(run.path), "--runs-dir", str(tmp_path / "new")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    new = RunDir(out.stdout.strip().splitlines()[-1])
    assert new.is_complete and new.path.name == run.path.name
    assert_same_tensors(run.state_dict(), new.state_dict())


# -- integrity -------------------------------------------------------------------------------------
def test_manifest_lists_every_artifact(compose_tiny):
    run = train(compose_tiny("distill=cross"))
    files = artifacts.read_json(run / artifacts.MANIFEST)["files"]
    for name in ("model.pt", "meta.json", "metrics.json", "outputs/test.npz", "features/final.npz",
                 "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert files[name]["sha256"] == artifacts.file_digest(run / name), name
        assert files[name]["size"] == (run / name).stat().st_size
    assert "COMPLETE" not in files and not any(k.endswith(".sha256") for k in files)
    assert run.verify() == []


def test_bit_flip_in_model_file_is_caught_everywhere(compose_tiny, tmp_path):
    from analysis.runs import load_run
    from biaskd.tools.verify import main as verify_main

    cfg = compose_tiny()
    run = train(cfg)
    flip_bit(run / "model.pt", 0.6)
    # torch alone loads the damaged file without complaint: only the manifest tells
    torch.load(run / "model.pt", weights_only=True)
    with pytest.raises(ArtifactError, match="model.pt.*do not match"):
        load_model(run)
    with pytest.raises(ArtifactError, match="model.pt"):
        load_run(run.path).state_dict()
    assert verify_main([str(run.path.parent)]) == 1
    # the training command does not call it complete; it names the file and the way out
    with pytest.raises(ArtifactError, match=r"model.pt.*\+repair=true"):
        train(cfg)
    fixed = train(compose_tiny("+repair=true"))
    assert fixed.path == run.path and fixed.verify() == [] and load_model(fixed) is not None
    assert len(list((run.path.parent / ".bad").iterdir())) == 1  # the damaged run kept aside


def test_bit_flip_in_features_file_is_caught_by_analysis(compose_tiny):
    from analysis.runs import load_run

    run = train(compose_tiny())
    flip_bit(run / "features" / "final.npz", 0.5)
    with pytest.raises(ArtifactError, match="final.npz"):
        load_run(run.path).features()
    assert any("final.npz" in p for p in run.verify())


def test_bit_flip_in_resume_checkpoint_stops_the_resume(compose_tiny):
    cfg = compose_tiny()
    run = train(cfg)
    for name in ("COMPLETE", artifacts.MANIFEST):  # as if killed before it finished
        (run / name).unlink()
    flip_bit(run / "checkpoints" / "last.ckpt", 0.7)
    with pytest.raises(ArtifactError, match=r"last.ckpt.*\+repair=true"):
        train(cfg)
    assert not run.is_complete
    assert train(compose_tiny("+repair=true")).is_complete


def test_checkpoint_digest_accepts_either_version_around_the_rename(tmp_path):
    path = tmp_path / "last.ckpt"
    artifacts.atomic_write(path, lambda f: f.write(b"one"), digest=True)
    artifacts.check_file(path)
    artifacts.atomic_write(path, lambda f: f.write(b"two"), digest=True)
    artifacts.check_file(path)
    assert len(artifacts._sidecar_digests(path)) == 1
    path.write_bytes(b"six")
    with pytest.raises(ArtifactError, match="last.ckpt"):
        artifacts.check_file(path)


def test_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = artifacts.write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o666 & ~artifacts._umask


# -- one writer per run dir; logs across a resume -----------------------------------------------------
def _biaskd(args, runs):
    cmd = [sys.executable, "-m", "biaskd.tools.cli", *args, f"runs_dir={runs}", *QUIET]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_same_command_twice_at_once_trains_once(tmp_path):
    args = ["task=toy", "model=mlp_small", "task.n_train=4000", "trainer.max_epochs=3"]
    a, b = _biaskd(args, tmp_path), _biaskd(args, tmp_path)
    outs = [p.communicate(timeout=300)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    assert sum("complete, skipping" in o for o in outs) == 1
    (csv_path,) = tmp_path.glob("default/*/logs/metrics.csv")
    rows = [tuple(r.items()) for r in _rows(csv_path)]
    assert len(rows) == len(set(rows)) > 0


class _Stop(Exception):
    pass


def test_interrupted_and_resumed_run_has_the_same_log_and_weights(compose_tiny, tmp_path, monkeypatch):
    import lightning as L

    import biaskd.run.train as train_mod

    args = ("trainer.max_epochs=3", "trainer.log_every_n_steps=2")
    whole = train(compose_tiny(*args, runs_dir=tmp_path / "whole"))

    class StopInEpoch2(L.Callback):
        def on_train_batch_start(self, trainer, *a):
            if trainer.current_epoch == 2 and trainer.global_step % 4 == 1:
                raise _Stop()

    make = train_mod.make_trainer

    def stopping_trainer(*a, **k):
        t = make(*a, **k)
        t.callbacks.append(StopInEpoch2())
        return t

    cfg = compose_tiny(*args, runs_dir=tmp_path / "cut")
    monkeypatch.setattr(train_mod, "make_trainer", stopping_trainer)
    with pytest.raises(_Stop):
        train(cfg)
    monkeypatch.setattr(train_mod, "make_trainer", make)
    (cut_dir,) = [p for p in (tmp_path / "cut" / "default").glob("toy-*") if p.is_dir()]
    early = _rows(cut_dir / "logs" / "metrics.csv")
    assert early, "rows were logged before the interruption"
    (cut_dir / "logs" / ".metrics.csv.x.tmp").write_text("left by a killed writer")
    resumed = train(cfg)
    assert not list(resumed.path.rglob("*.tmp"))
    assert _rows(resumed / "logs" / "metrics.csv") == _rows(whole / "logs" / "metrics.csv")
    assert_same_tensors(whole.state_dict(), resumed.state_dict())


# -- errors a person reads -------------------------------------------------------------------------------
BAD = [
    (["distill=cross", "distill.alpha=1.5"], "distill.alpha"),
    (["distill=cross", "distill.temperature=0"], "distill.temperature"),
    (["train.optimizer=foo"], "train.optimizer"),
    (["train.lr_schedule=warm"], "train.lr_schedule"),
    (["task=mnist", "task.ood=[{name:translated,severity:9}]"], r"task.ood\[0\]"),
    (["distill=cross", "teacher.model=cnn_small"], "model@teacher.model=cnn_small"),
    (["distill=cross", "+teacher.overrides.train.optimizer=bar"], "teacher.overrides.train.optimizer"),
    (["distill=cross", "+teacher.overrides.train.batchsize=3"], "teacher.overrides.train.batchsize"),
    (["distill=self", "+teacher.overrides.train.lr=-1"], "teacher.overrides.train.lr"),
    (["distill=cross", "teacher.max_epochs=0"], "teacher.max_epochs"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[k for _, k in BAD])
def test_bad_config_names_its_key_before_anything_exists(compose_tiny, tmp_path, overrides, key):
    cfg = compose_tiny(*overrides)
    with pytest.raises(ConfigError, match=key):
        config_mod.check(cfg)
    with pytest.raises(ConfigError, match=key):
        train(cfg)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("meta.json"))


@pytest.mark.parametrize("multirun", [False, True])
def test_cli_error_is_one_line_without_traceback(tmp_path, multirun):
    args = ["-m", "distill=cross", "distill.alpha=1.5,0.5", "trainer.max_epochs=1", "task=toy",
            "model=mlp_small", "model@teacher.model=mlp_small"] if multirun else ["distill=cross", "distill.alpha=1.5"]
    out = subprocess.run([sys.executable, "-m", "biaskd.tools.cli", *args, f"runs_dir={tmp_path}", *QUIET],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "Error executing job" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if "distill.alpha' must be <= 1" in line]
    assert len(lines) == 1, out.stderr
    if multirun:
        assert "1 job(s) failed" in out.stderr
        assert len(list(tmp_path.rglob("COMPLETE"))) == 2  # the good job (and its teacher) still ran
    else:
        assert out.stderr.strip() == "error: ConfigError: config key 'distill.alpha' must be <= 1, got 1.5"
        assert not list(tmp_path.rglob("meta.json"))


def test_non_utf8_byte_in_numpred_file_names_the_line(tmp_path):
    from biaskd.data.sva import read_numpred
    from biaskd.errors import DataFormatError

    p = tmp_path / "numpred.test"
    p.write_bytes(b"VBZ\tthe dog\nVBP\tthe dogs\nVBZ\tthe \xff cat\n")
    with pytest.raises(DataFormatError, match=r"numpred.test: line 3: not UTF-8"):
        read_numpred(p)
