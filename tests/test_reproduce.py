"""biaskd.record.reproduce: comparisons on values worked out by hand, and `biaskd.tools.rerun` saying which
check it made (bit-identical on one machine, within tolerance on a machine with other kernels)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from biaskd.record import reproduce
from biaskd.record.artifacts import RunDir
from biaskd.run.train import train

ENV = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "offline"}


def test_relative_difference_by_hand():
    assert reproduce.relative_difference(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert reproduce.relative_difference(np.array([3.0, 4.5]), np.array([3.0, 4.0])) == pytest.approx(0.1)  # 0.5 / 5
    assert reproduce.relative_difference(np.array([0.3, 0.4]), np.zeros(2)) == pytest.approx(0.5)
    assert reproduce.relative_difference(np.zeros(3), np.zeros(2)) == float("inf")


def test_compare_values_modes():
    same = reproduce.compare_values({"a/loss": 1.0 + 1e-12}, {"a/loss": 1.0}, same=True)
    assert not same.ok and same.how == reproduce.BIT_IDENTICAL and "a/loss" in same.line()
    other = reproduce.compare_values({"a/loss": 1.00005}, {"a/loss": 1.0}, same=False)
    assert other.ok and other.how == reproduce.WITHIN_TOLERANCE
    assert not reproduce.compare_values({"a/loss": 1.0002}, {"a/loss": 1.0}, same=False).ok
    # an accuracy over 128 examples may move by one example, not two
    steps = {"a/accuracy": 1 / 128}
    assert reproduce.compare_values({"a/accuracy": 0.5 + 1 / 128}, {"a/accuracy": 0.5}, False, steps=steps).ok
    assert not reproduce.compare_values({"a/accuracy": 0.5 + 2 / 128}, {"a/accuracy": 0.5}, False, steps=steps).ok
    assert not reproduce.compare_values({}, {"a/loss": 1.0}, same=False).ok  # a missing value fails


def test_compare_weights_by_relative_norm():
    e = {"w": torch.tensor([3.0, 4.0]), "b": torch.zeros(1)}
    assert reproduce.compare_weights(dict(e), e, same=True).ok
    near = {"w": torch.tensor([3.0, 4.001]), "b": torch.zeros(1)}  # 0.001 / 5 = 2e-4
    assert not reproduce.compare_weights(near, e, same=True).ok
    result = reproduce.compare_weights(near, e, same=False)
    assert result.ok and result.worst["weights"] == pytest.approx(2e-4, rel=1e-4)
    far = {"w": torch.tensor([3.0, 4.1]), "b": torch.zeros(1)}  # 0.1 / 5 = 2e-2
    assert not reproduce.compare_weights(far, e, same=False).ok
    assert not reproduce.compare_weights({"w": e["w"]}, e, same=False).ok  # a tensor missing


def test_machine_signature_names_the_kernel_set(monkeypatch):
    sig = reproduce.machine_signature(threads=1)
    assert sig["threads"] == "1" and sig["torch"] == torch.__version__ and sig["cpu_capability"]
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert not reproduce.same_machine(reproduce.machine_signature(threads=1), sig)


def _rerun(run, dest, env=ENV):
    return subprocess.run([sys.executable, "-m", "biaskd.rerun", str(run.path), "--runs-dir", str(dest)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_rerun_says_which_check_it_made(compose_tiny, tmp_path):
    run = train(compose_tiny("distill=cross"))
    out = _rerun(run, tmp_path / "same")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{run.path.name} vs {run.path}: bit-identical" in out.stdout
    # the same CPU restricted to another instruction set is another machine for the bits
    other = _rerun(run, tmp_path / "other", env={**ENV, "ATEN_CPU_CAPABILITY": "default"})
    assert other.returncode == 0, other.stdout + other.stderr[-2000:]
    assert "equal within tolerance, other machine" in other.stdout
    new = RunDir(other.stdout.strip().splitlines()[-1])
    assert new.meta["machine"]["ATEN_CPU_CAPABILITY"] == "default"


@pytest.mark.slow
def test_compare_runs_finds_a_changed_run(compose_tiny):
    a = train(compose_tiny())
    b = train(compose_tiny("train.lr=1.2e-3"))
    assert reproduce.compare_runs(a, a).ok and reproduce.compare_runs(a, a).how == reproduce.BIT_IDENTICAL
    result = reproduce.compare_runs(b, a)
    assert not result.ok and result.line().startswith("differs (bit-identical check)")
