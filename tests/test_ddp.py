"""Runs trained by several processes: ``trainer=ddp`` with 2 ranks on the CPU (gloo), started as
a user starts them (the ``biaskd`` command; Lightning reruns it for rank 1), and bf16-mixed.

Every write into the runs folder and every file lock taken is logged, by process, through a
``sitecustomize`` the subprocesses load (``_hook``), so the tests see who wrote what."""
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biaskd.data.base import Split, TensorBatches
from biaskd.errors import ConfigError
from biaskd.run import distributed

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # a hang fails the test instead of blocking the suite

#: a cross-distilled student and its teacher, 2 epochs; 249 training examples, so the last batch
#: of 32 holds 25: 13 + 12 over two ranks (loss scales 26/25 and 24/25)
RUN = ["distill=cross", "task=toy", "task.n_train=249", "model=mlp_small", "model@teacher.model=cnn_small",
       "trainer.max_epochs=2", "train.lr=1e-2", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
       "threads=1"]
ONE_PROCESS = ["train.batch_size=32"]  # trainer=cpu: 32-true, deterministic
TWO_RANKS = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.deterministic=true",
             "train.batch_size=16"]  # 2 x 16: the same global batch
STEPS = 2 * math.ceil(249 / 32)
N_EVAL = 128  # examples of each toy eval split

# Measured (this machine, 2 ranks x 16 against 1 process x 32, fp32): the same batches in the same
# order, so the runs differ only by the rounding of the gradient mean (two means of 16, averaged,
# against one mean of 32): final weights within 2e-7, eval logits within 1.2e-7, test loss and
# accuracy identical to 8 decimals. Without the loss scale of the short last batch the weights
# moved 3e-4..5e-4 and the losses 1e-5..1e-4. Tolerances: 50x the measured rounding, below that.
WEIGHT_ATOL = 1e-5
LOSS_ATOL = 1e-5
# bf16-mixed against fp32, the same runs otherwise (measured over seeds 1..5, 1 process, teacher and
# student, both eval splits): accuracy at most 2 examples of 128 apart, losses at most 7.2e-3,
# weights up to 0.1 (the autocast matmuls round their inputs to bf16's 8-bit mantissa). Tolerances:
# 3x that, 6 examples and 2e-2.
BF16_ACC_ATOL = 6 / N_EVAL
BF16_LOSS_ATOL = 2e-2

HOOK = '''
import os

_log = os.environ.get("BIASKD_TEST_WRITES")
if _log:
    def _note(kind, path):
        with open(_log, "a") as f:
            f.write(f"{kind} {os.getpid()} {os.fspath(path)}\\n")

    _replace = os.replace

    def _logged_replace(src, dst, *args, **kwargs):  # every artifacts.atomic_write ends here
        _replace(src, dst, *args, **kwargs)
        _note("write", dst)

    os.replace = _logged_replace

    import filelock

    _acquire = filelock.FileLock.acquire

    def _logged_acquire(self, *args, **kwargs):
        out = _acquire(self, *args, **kwargs)
        _note("lock", self.lock_file)
        return out

    filelock.FileLock.acquire = _logged_acquire
'''


@pytest.fixture(scope="module")
def hook(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hook")
    (folder / "sitecustomize.py").write_text(HOOK)
    return folder


def biaskd(args: list[str], runs: Path, hook: Path) -> dict:
    """``python -m biaskd.tools.cli ARGS runs_dir=RUNS``: its pid, exit status, output and the
    (kind, pid, path) of every write and lock under ``runs``."""
    log = runs.parent / f"{runs.name}.events"
    before = log.read_text().splitlines() if log.exists() else []
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore", BIASKD_TEST_WRITES=str(log),
               PYTHONPATH=os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-m", "biaskd.tools.cli", *args, f"runs_dir={runs}"], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # rank 1 too: Lightning starts it in the same process group
        out, _ = p.communicate()
        pytest.fail(f"biaskd {' '.join(args)} did not finish in {TIMEOUT}s:\n{out[-3000:]}")
    lines = log.read_text().splitlines()[len(before):] if log.exists() else []
    events = [tuple(line.split(" ", 2)) for line in lines]
    events = [(kind, int(pid), Path(path)) for kind, pid, path in events if Path(path).is_relative_to(runs)]
    return {"pid": p.pid, "returncode": p.returncode, "out": out, "events": events}


def complete_runs(runs: Path) -> dict[str, Path]:
    found = {}
    for marker in runs.rglob("COMPLETE"):
        role = json.loads((marker.parent / "meta.json").read_text())["role"]
        assert role not in found, f"two {role} runs: {found[role]}, {marker.parent}"
        found[role] = marker.parent
    return found


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, hook):
    runs = tmp_path_factory.mktemp("one") / "runs"
    job = biaskd([*RUN, *ONE_PROCESS], runs, hook)
    assert job["returncode"] == 0, job["out"][-3000:]
    return complete_runs(runs)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, hook):
    runs = tmp_path_factory.mktemp("two") / "runs"
    job = biaskd([*RUN, *TWO_RANKS, "trainer.precision=32-true"], runs, hook)
    assert job["returncode"] == 0, job["out"][-3000:]
    again = biaskd([*RUN, *TWO_RANKS, "trainer.precision=32-true"], runs, hook)
    return runs, job, again


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_two_ranks_make_one_job_with_one_writer(two_ranks):
    runs, job, again = two_ranks
    found = complete_runs(runs)
    assert set(found) == {"student", "teacher"}
    run_dirs = sorted(p for p in runs.glob("*/*") if p.is_dir() and p.parent.name != "_hydra")
    assert run_dirs == sorted(found.values())  # one run dir per run, nothing half-made beside them
    assert job["out"].count("training teacher:") == 1 and "waiting for another process" not in job["out"]
    assert "Traceback" not in job["out"]  # rank 1 prints into the same output
    writers = {pid for kind, pid, path in job["events"] if kind == "write" and "_hydra" not in path.parts}
    assert writers == {job["pid"]}, f"written by {writers}, rank 0 is {job['pid']}"
    run_locks = [(pid, path) for kind, pid, path in job["events"]
                 if kind == "lock" and path.with_suffix("") in found.values()]
    assert sorted(path for _, path in run_locks) == sorted(p.with_name(p.name + ".lock") for p in found.values())
    assert {pid for pid, _ in run_locks} == {job["pid"]}  # each run's lock taken once, by rank 0
    cache = [path for kind, _, path in job["events"] if kind == "write" and "teacher_cache" in path.parts
             and path.suffix == ".npz"]
    assert len(cache) == 1 and cache[0].parent.parent == found["teacher"]  # the teacher's logits computed once
    # rank 1 read them: it took the cache's lock after rank 0 had written it
    cache_locks = [pid for kind, pid, path in job["events"] if kind == "lock" and "teacher_cache" in path.parts]
    assert len(cache_locks) == 2 and len(set(cache_locks)) == 2
    for role, run in found.items():
        meta = json.loads((run / "meta.json").read_text())
        assert meta["processes"] == {"world_size": 2, "batch_size_per_process": 16, "global_batch_size": 32,
                                     "strategy": "ddp", "backend": "gloo"}
        assert metrics(run)["train"]["steps"] == STEPS
    verify = subprocess.run([sys.executable, "-m", "biaskd.verify", str(runs)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # the same command again: both ranks find the run complete, nothing is written
    assert again["returncode"] == 0, again["out"][-3000:]
    assert again["out"].count("complete, skipping") == 1
    assert not [e for e in again["events"] if e[0] == "write" and "_hydra" not in e[2].parts]


@pytest.mark.slow
def test_two_ranks_record_every_example_of_each_split_once(two_ranks, one_process):
    found = complete_runs(two_ranks[0])
    for role, run in found.items():
        splits = metrics(run)["splits"]
        assert set(splits) == {"test", "shifted"}
        for split in splits:
            with np.load(run / "outputs" / f"{split}.npz") as two, \
                    np.load(one_process[role] / "outputs" / f"{split}.npz") as one:
                assert len(two["ids"]) == N_EVAL and sorted(two["ids"].tolist()) == list(range(N_EVAL))
                assert np.array_equal(two["ids"], one["ids"])  # the split's order
                assert np.array_equal(two["labels"], one["labels"])
                # the metrics are those of the whole split
                accuracy = float(np.mean(two["logits"].argmax(1) == two["labels"]))
                assert splits[split]["accuracy"] == pytest.approx(accuracy, abs=1e-9)


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_global_batch(two_ranks, one_process):
    found = complete_runs(two_ranks[0])
    for role in ("teacher", "student"):
        two, one = found[role], one_process[role]
        assert metrics(one)["train"]["steps"] == metrics(two)["train"]["steps"] == STEPS
        w2, w1 = torch.load(two / "model.pt"), torch.load(one / "model.pt")
        worst = max(float((w2[k] - w1[k]).abs().max()) for k in w1)
        assert worst <= WEIGHT_ATOL, f"{role}: weights {worst:.2e} apart"
        for split, m1 in metrics(one)["splits"].items():
            m2 = metrics(two)["splits"][split]
            assert abs(m2["loss"] - m1["loss"]) <= LOSS_ATOL, (role, split, m1["loss"], m2["loss"])
            assert abs(m2["accuracy"] - m1["accuracy"]) <= 1 / N_EVAL, (role, split, m1["accuracy"], m2["accuracy"])


@pytest.mark.slow
def test_bf16_mixed_on_cpu_trains_complete_runs_near_fp32(tmp_path, hook, one_process):
    """trainer=ddp's own precision (bf16-mixed), 2 ranks on the CPU, against the fp32 1-process run."""
    runs = tmp_path / "runs"
    job = biaskd([*RUN, *TWO_RANKS], runs, hook)
    assert job["returncode"] == 0, job["out"][-3000:]
    found = complete_runs(runs)
    assert set(found) == {"student", "teacher"}
    verify = subprocess.run([sys.executable, "-m", "biaskd.verify", str(runs)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for role, run in found.items():
        config = (run / "config.yaml").read_text()
        assert "precision: bf16-mixed" in config
        m = metrics(run)
        assert m["train"]["steps"] == STEPS
        for split, values in m["splits"].items():
            assert all(math.isfinite(v) for v in values.values() if isinstance(v, float)), (role, split, values)
            fp32 = metrics(one_process[role])["splits"][split]
            assert abs(values["accuracy"] - fp32["accuracy"]) <= BF16_ACC_ATOL, (role, split, values, fp32)
            assert abs(values["loss"] - fp32["loss"]) <= BF16_LOSS_ATOL, (role, split, values, fp32)
        assert all(torch.isfinite(w).all() for w in torch.load(run / "model.pt").values())


# -- the parts, in-process -------------------------------------------------------------------------------
def _split(n: int) -> Split:
    return Split("train", torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n, dtype=torch.long),
                 torch.arange(n))


@pytest.mark.parametrize("bucketed", [False, True])
@pytest.mark.parametrize("n, batch_size, world", [(249, 16, 2), (18, 4, 4), (100, 10, 3), (64, 8, 2)])
def test_shards_make_the_one_process_batches_and_their_mean(n, batch_size, world, bucketed):
    """Together the ranks step on exactly the batches one process draws with batch_size x world
    (length-bucketed too), and their loss-scaled means average to each batch's mean."""
    split = _split(n)
    lengths = torch.randint(1, 9, (n,), generator=torch.Generator().manual_seed(0)) if bucketed else None
    one = TensorBatches(split, batch_size * world, seed=3, lengths=lengths, bucket_factor=2)
    ranks = [TensorBatches(split, batch_size, seed=3, lengths=lengths, bucket_factor=2, shard=(r, world))
             for r in range(world)]
    assert all(len(r) == len(one) for r in ranks)
    values = torch.randn(n, dtype=torch.float64)
    for epoch in range(2):
        for batches in (one, *ranks):
            batches.set_epoch(epoch)
        for batch, parts in zip(one, zip(*ranks)):
            scales = [p.get("loss_scale", 1.0) for p in parts]
            real = [p["idx"] for p, s in zip(parts, scales) if s > 0]
            assert torch.equal(torch.cat(real), batch["idx"])  # the same rows, in the same order
            mean = sum(s * values[p["idx"]].mean() for p, s in zip(parts, scales)) / world
            assert float(mean) == pytest.approx(float(values[batch["idx"]].mean()), abs=1e-12)


def test_a_spawning_strategy_is_refused_before_anything_starts():
    with pytest.raises(ConfigError, match="strategy"):
        distributed.launch({"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"})
    assert distributed.world_size() == 1


def test_one_process_needs_no_launch():
    distributed.launch({"accelerator": "cpu", "devices": 1})
    assert distributed.world_size() == 1 and distributed.shard() is None and distributed.record(64) == {}
    assert distributed.on_main(lambda x: x + 1, 1) == 2


def test_a_teacher_cannot_start_processes_inside_a_one_process_run(tmp_path):
    from biaskd.record.artifacts import RunDir

    with distributed.run_lock(RunDir(tmp_path / "student")):
        with pytest.raises(ConfigError, match="inside a 1-process run"):
            distributed.launch({"accelerator": "cpu", "devices": 2, "strategy": "ddp"})
    assert distributed.world_size() == 1
