"""Every failure of a run or of a sweep's job is one line, and what can be checked before a run
dir exists is checked before: the `biaskd` command as a user types it (in this process, with
Hydra's own entry point, or in a subprocess), its exit status, what it printed, what it left."""
import errno
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from biaskd import config as config_mod
from biaskd.errors import ArtifactError, ConfigError, StorageError
from biaskd.record.artifacts import RunDir
from biaskd.record.sweep import FAILURE_FILE, RUNS_FILE, TRACEBACK_HEAD
from biaskd.run.train import train
from biaskd.tools import cli as cli_mod

QUIET = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "threads=1"]
TINY = ["task=toy", "model=mlp_small", "model@teacher.model=cnn_small", *QUIET]
NO_GPU = not torch.cuda.is_available()


def run_cli(monkeypatch, capsys, tmp_path, *args, tiny=True):
    """Run ``biaskd [TINY] ARGS runs_dir=tmp_path/runs`` in this process: (exit status, stdout, stderr)."""
    flags = [a for a in args if a.startswith("-")]  # -m
    overrides = [a for a in args if not a.startswith("-")]
    monkeypatch.setattr(sys, "argv", ["biaskd", *flags, *(TINY if tiny else QUIET), *overrides,
                                      f"runs_dir={tmp_path / 'runs'}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setenv("BIASKD_USER_FULL_ERROR", os.environ.get("BIASKD_VERBOSE", "0"))
    monkeypatch.setattr(cli_mod, "_state", {"failed": 0, "bugs": 0, "started": False, "damaged": 0})
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    GlobalHydra.instance().clear()
    try:
        cli_mod.main()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        for h in list(root.handlers):  # Hydra's logging setup, undone
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    out, err = capsys.readouterr()
    return status, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(("error:", "[job failed]")) or "Traceback" in line]


def run_dirs(runs: Path) -> list[Path]:
    """Run dirs (and their lock files) under ``runs``, Hydra's own folder aside."""
    if not runs.exists():
        return []
    return [p for p in runs.glob("*/*") if p.parent.name != "_hydra"]


# -- checks before a run dir exists --------------------------------------------------------------------
PRE_RUN = [
    (["+trainer.max_epoch=3"],
     "ConfigError: config key 'trainer.max_epoch' is not an argument of lightning.Trainer; "
     "did you mean 'trainer.max_epochs'?"),
    (["trainer.accelerator=tpu"], "config key 'trainer.accelerator': accelerator 'tpu' is not available on this machine"),
    (["trainer.accelerator=abacus"], "config key 'trainer.accelerator' must be one of auto, cpu, cuda, gpu, mps, tpu; "
                                     "got 'abacus'"),
    (["trainer.precision=17"], "config key 'trainer': lightning.Trainer refuses these settings: ValueError: Precision"),
    (["+trainer.logger=false"], "config key 'trainer.logger': every run sets the Trainer's logger itself"),
    (["distill=cross", "+teacher.overrides.trainer.accelerator=tpu"],
     "config key 'teacher.overrides.trainer.accelerator': accelerator 'tpu' is not available on this machine"),
    (["task.num_classes=1"], "ConfigError: config key 'task.num_classes' must be >= 2, got 1"),
    (["+distill.temprature=3"],
     "ConfigError: config key 'distill.temprature' is not a key biaskd reads (+distill.temprature=3 adds it); "
     "did you mean 'distill.temperature'?"),
    (["distill=cross", "+distill.alpah=0.5"], "did you mean 'distill.alpha'?"),
    (["+foo=1"], "ConfigError: config key 'foo' is not a key biaskd reads (+foo=1 adds it); the keys at the top "
                 "level are: cache_dir, callbacks, data_dir, distill,"),
    (["++foo=1"], "config key 'foo' is not a key biaskd reads (++foo=1 adds it)"),
    (["+train.lr_shedule=cosine"], "did you mean 'train.lr_schedule'?"),
    (["+model.hiden=[8]"], "config key 'model.hiden' is not an argument of biaskd.models.vision.MLP "
                           "(+model.hiden=[8] adds it); did you mean 'model.hidden'?"),
    (["+model.num_classes=3"], "config key 'model.num_classes' (+model.num_classes=3): num_classes is given to "
                               "biaskd.models.vision.MLP by biaskd itself"),
    (["distill=cross", "+teacher.model.chanels=[4]"], "did you mean 'teacher.model.channels'?"),
    (["+task.n_trian=100"], "config key 'task.n_trian' is not an argument of biaskd.data.toy.ToyImages "
                            "(+task.n_trian=100 adds it); did you mean 'task.n_train'?"),
    (["+task.kd.temprature=3"], "did you mean 'task.kd.temperature'?"),
    (["distill.alpha=1.5"], "ConfigError: config key 'distill.alpha' must be <= 1, got 1.5"),  # distill=none
    (["distill.temperature=0"], "config key 'distill.temperature' must be > 0, got 0"),
]
if NO_GPU:
    PRE_RUN.append((["trainer=gpu"], "config key 'trainer.accelerator': accelerator 'gpu' is not available on this "
                                     "machine (no CUDA or MPS device); use trainer=cpu or trainer.accelerator=cpu"))


@pytest.mark.parametrize("args,message", PRE_RUN, ids=[" ".join(a) for a, _ in PRE_RUN])
def test_a_bad_setting_is_one_line_before_a_run_dir_exists(monkeypatch, capsys, tmp_path, args, message):
    status, out, err = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert status == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "error" not in out.lower()
    assert run_dirs(tmp_path / "runs") == []  # no run dir, no lock beside one


def test_missing_data_is_one_line_before_a_run_dir_exists(monkeypatch, capsys, tmp_path):
    status, _, err = run_cli(monkeypatch, capsys, tmp_path, "task=sva_linzen", f"data_dir={tmp_path / 'nowhere'}",
                           "model=lstm", "model.d_model=8", tiny=False)
    assert status == 2
    assert error_lines(err) == [f"error: MissingDataError: {tmp_path / 'nowhere'}/numpred.val not found (sva source "
                                f"'linzen' needs numpred.val in data_dir)"]
    assert run_dirs(tmp_path / "runs") == []


def test_added_keys_that_something_reads_train(monkeypatch, capsys, tmp_path):
    """Optional keys (+repair), an existing key forced (++), a model's constructor argument."""
    status, out, err = run_cli(monkeypatch, capsys, tmp_path, "+repair=true", "++train.lr=0.01", "model.dropout=0.1")
    assert status == 0, err
    (run,) = [p for p in run_dirs(tmp_path / "runs") if p.is_dir()]
    assert RunDir(run).is_complete and OmegaConf.load(run / "config.yaml").train.lr == 0.01


def test_open_nodes_and_constructor_arguments_are_accepted(compose_tiny):
    check = config_mod.check_added_keys
    cfg = compose_tiny("distill=cross", "+teacher.overrides.train.lr=0.01", "+model.dropout_extra=0.1")
    check(compose_tiny("+teacher.overrides.train.lr=0.01"), {"teacher.overrides.train.lr": "+x"})
    check(compose_tiny("+task.data_seed=3"), {"task.data_seed": "+task.data_seed=3"})  # ToyImages(data_seed=...)
    check(compose_tiny("task=sva", "+task.grammar.n_valid=40"), {"task.grammar.n_valid": "+..."})  # grammar: checked when built
    check(compose_tiny("task=sva", "+task.extra_eval.mine=x.txt"), {"task.extra_eval.mine": "+..."})
    check(compose_tiny("distill=cross", "objective=relation", "++distill.relation.kind=rkd"), {"distill.relation.kind": "++..."})
    with pytest.raises(ConfigError, match=r"'model.dropout_extra' is not an argument of biaskd.models.vision.MLP"):
        check(cfg, {"model.dropout_extra": "+model.dropout_extra=0.1"})
    # a model class of the user's own that takes **kwargs takes any key
    with open_dict(cfg):
        cfg.model._target_ = f"{__name__}.AnyKeywords"
    check(cfg, {"model.dropout_extra": "+model.dropout_extra=0.1"})
    with pytest.raises(ConfigError, match=r"'distill.relation' is not a key biaskd reads"):  # not kd's options
        check(compose_tiny("+distill.relation.kind=rkd"), {"distill.relation.kind": "+distill.relation.kind=rkd"})


class AnyKeywords(torch.nn.Module):
    input_kind = "image"

    def __init__(self, num_classes, in_shape, **options):
        super().__init__()
        self.options = options


@pytest.mark.parametrize("key", ["attn_dropout", "dropout", "drop_prob", "drop_path_rate"])
def test_probability_keys_of_a_model_may_be_zero_but_not_one(compose_tiny, key):
    cfg = compose_tiny()
    with open_dict(cfg):
        cfg.model[key] = 0.0
    config_mod.validate(cfg)
    cfg.model[key] = 1.0
    with pytest.raises(ConfigError, match=rf"config key 'model.{key}' must be in \[0, 1\), got 1.0"):
        config_mod.validate(cfg)
    with open_dict(cfg):
        cfg.model[key] = 0.0
        cfg.model.hidden = [0]  # sizes are still positive
    with pytest.raises(ConfigError, match=r"config key 'model.hidden' must be > 0"):
        config_mod.validate(cfg)


# -- every failure is one line ----------------------------------------------------------------------------
def _fail_seed_2(real):
    def train(cfg, data=None):
        if int(cfg.seed) == 2:
            raise RuntimeError("an exception no one planned for")
        return real(cfg, data)
    return train


def test_a_run_stopped_by_an_unexpected_exception_is_one_line_and_its_traceback_is_kept(monkeypatch, capsys, tmp_path):
    import biaskd.run.train

    monkeypatch.setattr(biaskd.run.train, "train", _fail_seed_2(biaskd.run.train.train))
    status, _, err = run_cli(monkeypatch, capsys, tmp_path, "seed=2")
    assert status == 1
    (line,) = error_lines(err)
    (report,) = (tmp_path / "runs" / "_hydra").glob(f"*/{FAILURE_FILE}")
    assert line == (f"error: RuntimeError: an exception no one planned for (not one of biaskd's own errors; its "
                    f"traceback is in {report}, BIASKD_VERBOSE=1 shows it)")
    text = report.read_text()
    assert text.splitlines()[0] == line[len("error: "):] and TRACEBACK_HEAD in text and "test_preflight.py" in text
    monkeypatch.setenv("BIASKD_VERBOSE", "1")  # the traceback itself
    with pytest.raises(RuntimeError, match="no one planned for"):
        run_cli(monkeypatch, capsys, tmp_path, "seed=2")


def test_a_sweep_goes_on_after_a_job_fails_unexpectedly_and_ends_with_its_summary(monkeypatch, capsys, tmp_path):
    import biaskd.run.train

    monkeypatch.setattr(biaskd.run.train, "train", _fail_seed_2(biaskd.run.train.train))
    status, out, err = run_cli(monkeypatch, capsys, tmp_path, "-m", "seed=2,1")
    assert status == 1, err  # an exception that is not the project's own
    (line,) = error_lines(err)
    assert line.startswith("[job failed] ") and "seed=2" in line and "RuntimeError: an exception no one planned" in line
    (sweep,) = (tmp_path / "runs" / "_hydra").glob("*_multirun")
    assert TRACEBACK_HEAD in (sweep / "0" / FAILURE_FILE).read_text()
    (listed,) = (sweep / RUNS_FILE).read_text().split()
    assert RunDir(sweep / listed).is_complete and RunDir(sweep / listed).meta["seed"] == 1
    assert (sweep / "summary.md").exists() and "summary (mean ± 95% CI over seeds)" in out
    assert "1 job(s) failed" in err


@pytest.mark.skipif(not NO_GPU, reason="a machine with a GPU runs both jobs")
def test_a_sweep_with_a_job_this_machine_cannot_run(tmp_path):
    """The user's command: one job asks for a GPU on a CPU machine."""
    cmd = [sys.executable, "-m", "biaskd.tools.cli", "-m", *TINY, "trainer.accelerator=cpu,gpu", f"runs_dir={tmp_path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore"))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    (line,) = [line for line in p.stderr.splitlines() if line.startswith("[job failed]")]
    assert "trainer.accelerator=gpu" in line and line.endswith(
        "ConfigError: config key 'trainer.accelerator': accelerator 'gpu' is not available on this machine "
        "(no CUDA or MPS device); use trainer=cpu or trainer.accelerator=cpu")
    (sweep,) = (tmp_path / "_hydra").glob("*_multirun")
    assert (sweep / "1" / FAILURE_FILE).read_text() == line.split(": ", 1)[1] + "\n"
    (listed,) = (sweep / RUNS_FILE).read_text().split()
    assert RunDir(sweep / listed).is_complete
    assert (sweep / "summary.md").exists()
    assert [p.name for p in (tmp_path / "default").iterdir() if p.is_dir()] == [Path(listed).name]  # no gpu run dir


# -- storage ------------------------------------------------------------------------------------------------
def _read_only(monkeypatch, folder: Path) -> None:
    """``folder`` read-only: by its mode, or for root (whom modes do not stop) by a file system
    that says so when a file is made in it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kw)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("multirun", [False, True])
def test_a_read_only_runs_dir_is_one_line_before_anything_is_written(monkeypatch, capsys, tmp_path, multirun):
    runs = tmp_path / "runs"
    _read_only(monkeypatch, runs)
    try:
        status, _, err = run_cli(monkeypatch, capsys, tmp_path, *(["-m", "seed=1,2"] if multirun else []))
    finally:
        runs.chmod(0o755)
    reason = os.strerror(errno.EROFS if os.geteuid() == 0 else errno.EACCES)
    assert status == 2
    assert error_lines(err) == [f"error: StorageError: runs_dir {runs} is not writable ({reason}); choose another "
                                f"with runs_dir=..."]
    assert list(runs.iterdir()) == []  # not even Hydra's folder


def test_a_read_only_runs_dir_stops_a_run_before_its_lock(compose_tiny, monkeypatch, tmp_path):
    runs = tmp_path / "ro"
    _read_only(monkeypatch, runs)
    try:
        with pytest.raises(StorageError, match=f"runs_dir {runs} is not writable"):
            train(compose_tiny(runs_dir=runs))
    finally:
        runs.chmod(0o755)
    assert list(runs.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_run(monkeypatch, capsys, tmp_path):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", no_space)  # every atomic write of the run dir syncs its file
    status, _, err = run_cli(monkeypatch, capsys, tmp_path)
    assert status == 2
    (run,) = [p for p in run_dirs(tmp_path / "runs") if p.is_dir()]
    assert error_lines(err) == [f"error: StorageError: {os.strerror(errno.ENOSPC)} writing {run}; free some space "
                                f"and run the same command again (an interrupted run resumes)"]


# -- a checkpoint cut short ---------------------------------------------------------------------------------
def test_a_truncated_checkpoint_without_a_digest_is_named_and_repair_retrains(compose_tiny):
    cfg = compose_tiny()
    run = train(cfg)
    for name in ("COMPLETE", "MANIFEST.json", "checkpoints/last.ckpt.sha256"):  # killed mid-run, no digest kept
        (run / name).unlink(missing_ok=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=rf"^{ckpt}: cannot load \(.*\); rerun its command "
                                            rf"with \+repair=true to retrain"):
        train(cfg)
    fixed = train(compose_tiny("+repair=true"))
    assert fixed.path == run.path and fixed.is_complete
    assert len(list((run.path.parent / ".bad").iterdir())) == 1
