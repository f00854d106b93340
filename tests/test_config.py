"""Bad configs fail before any training, with one error naming the key."""
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from biaskd.config import validate
from biaskd.errors import ConfigError
from biaskd.run.train import train


@pytest.mark.parametrize(
    "override, key",
    [
        ("distill.alpha=1.5", "distill.alpha"),
        ("distill.alpha=-0.1", "distill.alpha"),
        ("distill.temperature=0", "distill.temperature"),
        ("distill.temperature=-2", "distill.temperature"),
        ("train.lr=0", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("model.hidden=[0]", "model.hidden"),
        ("distill.alpha=abc", "distill.alpha"),
        ("distill.teacher_outputs=sometimes", "distill.teacher_outputs"),
        ("teacher.task=sva", "teacher.task"),
    ],
)
def test_invalid_values_raise_config_error_naming_key(compose_tiny, override, key, tmp_path):
    cfg = compose_tiny("distill=cross", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(cfg)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("COMPLETE"))


@pytest.mark.parametrize("override", ["nosuchkey=1", "train.nosuch=3", "distill=nosuchmode", "model=nosuchmodel"])
def test_unknown_keys_and_groups_are_rejected_at_composition(compose_tiny, override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as info:
        compose_tiny(override)
    assert override.split("=")[0].split(".")[-1] in str(info.value) or override.split("=")[1] in str(info.value)


def test_model_for_another_input_kind_is_rejected(compose_tiny):
    cfg = compose_tiny()
    cfg.model._target_ = "biaskd.models.sequence.LSTMEncoder"
    with pytest.raises(ConfigError, match="inputs"):
        train(cfg)


def test_valid_default_config_passes(compose_tiny):
    validate(compose_tiny("distill=cross"))


def test_the_distill_modes_are_the_registry(compose_tiny):
    from biaskd.modes import MODES

    assert list(MODES) == ["none", "self", "cross", "online"]
    for bad in ("distill.mode=sometimes", "distill.mode=hints"):
        with pytest.raises(ConfigError, match=r"^config key 'distill\.mode' must be one of none, self, cross, online; "):
            validate(compose_tiny(bad))


def test_checking_a_config_does_not_import_the_training_stack():
    import subprocess
    import sys

    code = "import sys, biaskd.config; print(sorted(m for m in ('lightning', 'biaskd.run.train', 'biaskd.modules.classifier') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
