"""Faults: NaN losses, corrupt checkpoints and artifacts, interrupted writes."""
import json

import numpy as np
import pytest
import torch

from biaskd.errors import ArtifactError, TrainingError
from biaskd.record import artifacts
from biaskd.record.artifacts import RunDir
from biaskd.run.rebuild import load_model
from biaskd.run.train import train


def test_nan_loss_stops_run_and_marks_it_failed(compose_tiny):
    cfg = compose_tiny("train.lr=1e30", "train.optimizer=sgd")
    with pytest.raises(TrainingError, match="loss became"):
        train(cfg)
    runs = list((cfg_runs := __import__("pathlib").Path(cfg.runs_dir)).rglob("FAILED"))
    assert len(runs) == 1
    run = RunDir(runs[0].parent)
    assert not run.is_complete and "loss became" in json.loads((run / "FAILED").read_text())["reason"]
    with pytest.raises(ArtifactError, match="failed"):
        run.require_complete()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle"])
def test_corrupt_model_file_gives_one_clear_error(compose_tiny, damage):
    run = train(compose_tiny())
    path = run / "model.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:  # a pickle that would run code if loaded without weights_only
        class Evil:
            def __reduce__(self):
                return (print, ("code ran",))
        torch.save({"x": Evil()}, path)
    with pytest.raises(ArtifactError, match="model.pt"):
        load_model(run)


def test_corrupt_resume_checkpoint_names_the_file(compose_tiny):
    cfg = compose_tiny()
    run = train(cfg)
    (run / "COMPLETE").unlink()  # pretend it was interrupted
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="last.ckpt"):
        train(cfg)


def test_corrupt_array_and_json_files_name_the_file(tmp_path):
    p = artifacts.save_npz(tmp_path / "a.npz", x=np.arange(10))
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(ArtifactError, match="a.npz"):
        artifacts.load_npz(p)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="m.json"):
        artifacts.read_json(tmp_path / "m.json")


def test_atomic_write_leaves_nothing_when_writer_fails(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        artifacts.atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_stale_teacher_cache_is_recomputed(compose_tiny):
    s = train(compose_tiny("distill=cross"))
    teacher = s.teacher_dir
    cache = next((teacher.path / "teacher_cache").glob("train-*.npz"))
    good = artifacts.load_npz(cache)
    artifacts.save_npz(cache, logits=good["logits"][:10], ids=good["ids"][:10])  # wrong size
    train(compose_tiny("distill=cross", "distill.temperature=3.0"))
    fixed = artifacts.load_npz(cache)
    np.testing.assert_array_equal(fixed["logits"], good["logits"])


def test_run_dir_records_versions_commit_and_config(compose_tiny):
    run = train(compose_tiny())
    meta = run.meta
    assert {"torch", "lightning", "python", "numpy"} <= set(meta["versions"])
    assert "git_commit" in meta
    assert "model:" in (run / "config.yaml").read_text()
