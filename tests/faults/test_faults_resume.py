"""Kills inside the writes of a run, and an interrupted run's log damaged the ways a kill or a
disk leaves it: rerunning the command finishes the run to the numbers, weights and log of one
that was never interrupted, with no false row and no temporary file left, or stops with one
line naming the file (``+repair=true`` then keeps the run dir aside and trains it anew)."""
import logging
import shutil

import pytest
import torch

from biaskd.errors import ArtifactError
from biaskd.record import artifacts, schema
from biaskd.record.artifacts import RunDir
from biaskd.run.train import train
from biaskd.tools.verify import main as verify
from faultkit import Killed, assert_same_run, cfg, kill_in_rename, tree

#: (file renamed into place, which of its renames the kill hits, text the file must hold)
KILLS = [
    ("config.yaml", 1, None),
    ("meta.json", 1, None),
    ("features/step_000000000.npz", 1, None),  # the training path, before the first step
    ("checkpoints/step_000000004.pt", 1, None),
    ("logs/metrics.csv", 3, None),  # inside the log's write during training
    ("checkpoints/last.ckpt.sha256", 3, None),  # the second checkpoint's digest, before its rename
    ("checkpoints/last.ckpt", 2, None),  # the second checkpoint
    ("checkpoints/last.ckpt.sha256", 4, None),  # ... and after it
    ("model.pt", 1, None),
    ("outputs/test.npz", 1, None),
    ("features/final.npz", 1, None),
    ("metrics.json", 1, None),
    ("logs/metrics.csv", 1, b"test/accuracy"),  # the final rewrite, with the evaluation's new columns
    ("MANIFEST.json", 1, None),
    ("COMPLETE", 1, None),
]


@pytest.mark.parametrize("target,nth,content", KILLS,
                         ids=[f"{t}#{n}" + ("-final" if c else "") for t, n, c in KILLS])
def test_killed_inside_a_write_then_rerun_gives_the_uninterrupted_run(trained, tmp_path, monkeypatch, capsys,
                                                                      target, nth, content):
    reference = RunDir(trained.independent)
    copy = trained.copy(tmp_path / "runs")
    shutil.rmtree(copy.independent)  # trained anew beside the teacher it is compared with
    runs, run = copy.root, RunDir(copy.independent)
    killed = kill_in_rename(monkeypatch, target, nth, content)
    with pytest.raises(Killed):
        train(cfg(runs))
    assert killed["killed"]
    monkeypatch.undo()
    assert not run.is_complete
    assert list(run.path.rglob(f".*.killed{schema.TMP_SUFFIX}"))  # what the kill left behind

    again = train(cfg(runs))
    assert again.path == run.path and again.is_complete and again.verify() == []
    assert not list(run.path.rglob(f"*{schema.TMP_SUFFIX}")) and not (run.path.parent / ".bad").exists()
    assert_same_run(again, reference)
    capsys.readouterr()
    assert verify([str(runs)]) == 0


def _interrupted_copy(trained, tmp_path) -> RunDir:
    """A copy of the complete run as a kill after its last checkpoint leaves it (no manifest, no COMPLETE)."""
    runs = trained.copy(tmp_path / "runs")
    run = RunDir(runs.independent)
    for name in (schema.COMPLETE, schema.MANIFEST):
        (run / name).unlink()
    return run


def _without_log(ckpt) -> None:
    """``last.ckpt`` as written before checkpoints held the log (its digest sidecar updated)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state[schema.CHECKPOINT_LOG]
    artifacts.atomic_write(ckpt, lambda f: torch.save(state, f), digest=True)


def _lines(path):
    return path.read_bytes().split(b"\n")


#: the log of an interrupted run, damaged as a kill or a disk leaves it
LOG_DAMAGE = {
    # what Lightning's in-place rewrite left when killed: the header and one row
    "rewrite-cut": lambda p: p.write_bytes(b"\n".join(_lines(p)[:2]) + b"\n"),
    "torn-last-line": lambda p: p.write_bytes(p.read_bytes() + b"1,29"),
    "garbage-line": lambda p: p.write_bytes(b"\n".join([*_lines(p)[:3], b"\x00\xffgarbage,,", *_lines(p)[3:]])),
    "deleted": lambda p: p.unlink(),
    "not-text": lambda p: p.write_bytes(bytes(range(256)) * 4),
}


@pytest.mark.parametrize("how", LOG_DAMAGE)
def test_the_checkpoint_holds_the_log_it_goes_with(trained, tmp_path, how):
    run = _interrupted_copy(trained, tmp_path)
    LOG_DAMAGE[how](run / schema.LOG)
    again = train(cfg(run.path.parent.parent))
    assert again.path == run.path and again.verify() == [] and not (run.path.parent / ".bad").exists()
    assert_same_run(again, RunDir(trained.independent))


@pytest.mark.parametrize("last", [b"1,29", b"1,29,garbage\r\n"], ids=["torn", "not-a-row"])
def test_an_older_checkpoint_resumes_the_file_without_its_bad_last_line(trained, tmp_path, caplog, last):
    run = _interrupted_copy(trained, tmp_path)
    _without_log(run / schema.LAST_CHECKPOINT)
    log = run / schema.LOG
    log.write_bytes(log.read_bytes() + last)
    lines = len(_lines(log))
    with caplog.at_level(logging.WARNING, logger="biaskd"):
        again = train(cfg(run.path.parent.parent))
    (warning,) = [r.getMessage() for r in caplog.records if "metrics.csv" in r.getMessage()]
    reason = "was cut short by an interrupted write" if last == b"1,29" else "is not a row of the log"
    assert warning.startswith(f"{log}: its last line ({lines - (last != b'1,29')}) {reason}; dropped it")
    assert again.verify() == []
    assert_same_run(again, RunDir(trained.independent))


def test_an_older_checkpoint_stops_at_a_damaged_log_and_repair_keeps_it_aside(trained, tmp_path):
    run = _interrupted_copy(trained, tmp_path)
    _without_log(run / schema.LAST_CHECKPOINT)
    LOG_DAMAGE["garbage-line"](run / schema.LOG)
    before = tree(run.path)
    with pytest.raises(ArtifactError) as error:
        train(cfg(run.path.parent.parent))
    message = str(error.value)
    assert message.startswith(f"{run / schema.LOG}: line 4 is not a row of the log (")
    assert "\n" not in message and message.endswith(artifacts.REPAIR_HINT)
    assert tree(run.path) == before  # nothing written, nothing removed

    again = train(cfg(run.path.parent.parent, "independent", "+repair=true"))
    (kept,) = (run.path.parent / ".bad").iterdir()
    assert tree(kept) == before
    assert again.path == run.path and again.verify() == []
    assert_same_run(again, RunDir(trained.independent))


def test_the_log_is_written_atomically_and_as_lightning_writes_it(tmp_path, monkeypatch):
    """Every save of the log is one rename of a whole file; the file is the one Lightning's own
    CSV logger writes (appending, and rewriting it when a column appears), byte for byte."""
    import os

    from lightning.pytorch.loggers import CSVLogger

    from biaskd.modules.callbacks import RunLogger

    renames = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (renames.append(str(d)), real(s, d))[1])
    logged = [{"a": 1.0}, {"a": 2.5, "b": 3}, {"c": 0.125}]
    for logger in (CSVLogger(tmp_path / "plain", name="logs", version=""), RunLogger(RunDir(tmp_path / "atomic"))):
        for step, metrics in enumerate(logged):
            logger.log_metrics(metrics, step=step)
            logger.save()
        logger.finalize("success")
    assert (tmp_path / "atomic" / schema.LOG).read_bytes() == (tmp_path / "plain" / schema.LOG).read_bytes()
    assert renames == [str(tmp_path / "atomic" / schema.LOG)] * len(logged)
