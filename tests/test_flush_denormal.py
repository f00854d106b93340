"""``flush_denormal``: subnormal floats flushed to zero on the CPU. How the CPU computes, not what:
the run keeps its identity, its weights stay within the cross-machine tolerance of a run that keeps
subnormals, meta.json's machine signature says which was in effect, and the process gets its own
mode back when the run ends."""
import pytest
import torch
from omegaconf import open_dict

from biaskd.errors import ConfigError
from biaskd.record import reproduce
from biaskd.run.train import train

SUBNORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


def _kept() -> bool:
    """Whether this thread keeps subnormals: builds its subnormal now (under the mode in effect)."""
    return bool((torch.full((4,), SUBNORMAL, dtype=torch.float32) * 1.0 > 0).all())


@pytest.fixture
def keep_subnormals():
    reproduce.flush_denormal(False)
    yield
    reproduce.flush_denormal(False)  # the process default: later tests see subnormals


def test_flush_turns_subnormal_results_into_zero(keep_subnormals):
    assert reproduce.flush_denormal(False) is False
    assert _kept()  # 1e-39 is representable as a subnormal
    if not reproduce.flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    assert not _kept()
    assert torch.tensor(2e-38) * 0.25 == 0  # a product that falls below the normal range
    assert torch.tensor(4e-38) * 0.5 == pytest.approx(2e-38)  # normal results are untouched
    assert reproduce.machine_signature(threads=1)["flush_denormal"] == "True"
    reproduce.flush_denormal(False)
    assert _kept()
    assert reproduce.machine_signature(threads=1)["flush_denormal"] == "False"


def test_the_block_puts_back_the_mode_it_found(keep_subnormals):
    if not reproduce.flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    reproduce.flush_denormal(False)
    with reproduce.subnormals_flushed(True) as on:
        assert on and not _kept()
    assert _kept()
    with pytest.raises(RuntimeError), reproduce.subnormals_flushed(True):
        raise RuntimeError("a run that fails")
    assert _kept()
    reproduce.flush_denormal(True)
    with reproduce.subnormals_flushed(False) as on:
        assert not on and _kept()
    assert not _kept()  # flushing was on before the block: on again after it


def test_a_run_leaves_the_process_mode_as_it_found_it(compose_tiny, tmp_path, keep_subnormals):
    run = train(compose_tiny("flush_denormal=true", runs_dir=tmp_path))
    assert run.meta["machine"]["flush_denormal"] in {"True", "False"}
    assert _kept()  # flushing was off before the run, so it is off after it


def test_runs_with_and_without_flush_share_identity_and_weights(compose_tiny, tmp_path, keep_subnormals):
    on = train(compose_tiny("flush_denormal=true", runs_dir=tmp_path / "on"))
    off = train(compose_tiny("flush_denormal=false", runs_dir=tmp_path / "off"))
    assert on.path.name == off.path.name
    assert off.meta["machine"]["flush_denormal"] == "False"
    assert on.meta["machine"]["flush_denormal"] in {"True", "False"}  # False only where the CPU cannot
    if on.meta["machine"]["flush_denormal"] == "True":  # another signature: compared within tolerance
        assert not reproduce.same_machine(on.meta["machine"], off.meta["machine"])
    result = reproduce.compare_runs(on, off)
    assert result.ok, result


def test_a_config_from_before_the_key_keeps_subnormals(compose_tiny, tmp_path, keep_subnormals):
    cfg = compose_tiny(runs_dir=tmp_path)
    with open_dict(cfg):
        del cfg["flush_denormal"]
    run = train(cfg)
    assert run.meta["machine"]["flush_denormal"] == "False"


def test_flush_denormal_must_be_a_boolean(compose_tiny, tmp_path):
    with pytest.raises(ConfigError, match="'flush_denormal' must be true or false, got 'yes'"):
        train(compose_tiny("flush_denormal=yes", runs_dir=tmp_path))
