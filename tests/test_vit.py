"""The CNN -> ViT pair: the small Vision Transformer (biaskd.models.vit) and DeiT's hard-label
objective (biaskd.objectives.hard), by hand-computed values and known identities, and through a run."""
import math
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from biaskd.models.vit import ViT
from biaskd.objectives import OBJECTIVES, Outputs
from biaskd.objectives.hard import HardLabels
from biaskd.run.train import train

CONF_MODEL = Path(__file__).resolve().parent.parent / "conf" / "model"


def test_vit_config_size_features_and_logits():
    spec = OmegaConf.to_container(OmegaConf.load(CONF_MODEL / "vit.yaml"))
    spec.pop("name")
    model = hydra.utils.instantiate(spec, num_classes=10, in_shape=(1, 28, 28))
    # patch embedding 49·64+64 = 3,200; class token 64; positions 17·64 = 1,088; per layer: attention
    # 4·64·64+4·64 = 16,640, MLP 64·128+128+128·64+64 = 16,576, two LayerNorms 256 -> 33,472; two layers
    # 66,944; final LayerNorm 128; head 650.  Total 72,074.
    assert sum(p.numel() for p in model.parameters()) == 72_074
    x = torch.rand(3, 1, 28, 28)
    f, logits = model.features_and_logits(x)
    assert f.shape == (3, 64) and model.feature_dim == 64 and logits.shape == (3, 10)
    torch.testing.assert_close(model.eval()(x), logits)


def test_vit_sizes_are_checked():
    with pytest.raises(ValueError, match="patch size 5 does not divide the 28×28 image"):
        ViT(patch=5)
    with pytest.raises(ValueError, match="dim 30 is not divisible by heads 4"):
        ViT(dim=30, heads=4)


def test_without_position_embeddings_a_vit_cannot_see_a_shift_by_whole_patches():
    """The encoder treats its tokens as a set: with the position embeddings zeroed, a cyclic shift
    by a whole patch (which permutes the patch tokens) leaves the class token unchanged; the
    learned position embeddings are what let a ViT tell positions, and a shift, apart."""
    torch.manual_seed(0)
    model = ViT(patch=7, dim=32, depth=2, heads=2, mlp_dim=64).eval()
    x = torch.rand(4, 1, 28, 28)
    shifted = torch.roll(x, shifts=(7, 14), dims=(2, 3))
    with torch.no_grad():
        assert (model.features(shifted) - model.features(x)).abs().max() > 1e-3
        model.pos_embed.zero_()
        torch.testing.assert_close(model.features(shifted), model.features(x), rtol=1e-5, atol=1e-5)


def test_hard_labels_hand_computed():
    # teacher's top classes 1 and 0; student softmax (1, 3, 1)/5 and (2, 1, 1)/4
    student = Outputs(torch.tensor([[0.0, math.log(3.0), 0.0], [math.log(2.0), 0.0, 0.0]]))
    teacher = Outputs(torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 0.0]]))
    term = (math.log(5 / 3) + math.log(2.0)) / 2
    hard = OBJECTIVES["hard"]()
    assert isinstance(hard, HardLabels)
    assert hard(student, teacher, None, alpha=1.0).item() == pytest.approx(term, abs=1e-6)
    # alpha = 0.5 (DeiT's mix) with labels 1 and 2: CE = (ln(5/3) + ln 4) / 2
    ce = (math.log(5 / 3) + math.log(4.0)) / 2
    y = torch.tensor([1, 2])
    assert hard(student, teacher, y, alpha=0.5).item() == pytest.approx(0.5 * term + 0.5 * ce, abs=1e-6)
    # only the teacher's decision counts: any logits with the same argmax give the same loss
    sharper = Outputs(teacher.logits * 10)
    assert hard(student, sharper, y, alpha=0.5).item() == pytest.approx(0.5 * term + 0.5 * ce, abs=1e-6)


def test_a_vit_learns_from_a_cnn_teachers_hard_labels(compose_tiny):
    run = train(compose_tiny("model=vit", "model.patch=4", "model.dim=32", "model.heads=2", "distill=cross",
                             "model@teacher.model=cnn_small", "objective=hard", "trainer.max_epochs=10",
                             "train.lr=3e-3"))
    assert run.is_complete and run.meta["model"] == "vit" and run.meta["objective"] == "hard"
    assert run.meta["objective_options"] == {}  # no temperature: the transfer map leaves it empty
    assert run.metrics["splits"]["test"]["accuracy"] > 0.6  # 4 classes, chance 0.25; measured 0.81


def test_distillation_token_heads_and_deits_inference():
    torch.manual_seed(0)
    model = ViT(patch=7, dim=32, depth=1, heads=2, mlp_dim=32, distill_token=True).eval()
    x = torch.rand(3, 1, 28, 28)
    cls_logits, distill_logits = model.heads(x)
    assert cls_logits.shape == distill_logits.shape == (3, 10)
    assert (cls_logits - distill_logits).abs().max() > 1e-4  # two heads on two tokens
    torch.testing.assert_close(model(x), (cls_logits + distill_logits) / 2)  # DeiT predicts with their mean
    torch.testing.assert_close(model.features(x), model.tokens(x)[:, 0])
    assert model.pos_embed.shape == (1, 2 + 16, 32)
    with pytest.raises(ValueError, match="needs a distillation token"):
        ViT(patch=7, dim=32, depth=1, heads=2, mlp_dim=32).heads(x)


def test_token_objective_hand_computed():
    # class head softmax (1, 3, 1)/5 and (2, 1, 1)/4; distillation head (1, 1, 2)/4 and (1, 1, 1)/3
    cls_logits = torch.tensor([[0.0, math.log(3.0), 0.0], [math.log(2.0), 0.0, 0.0]])
    distill_logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, 0.0]])
    teacher = Outputs(torch.tensor([[0.0, 0.0, 9.0], [0.0, 4.0, 1.0]]))  # top classes 2 and 1
    y = torch.tensor([1, 0])
    term = (math.log(2.0) + math.log(3.0)) / 2  # CE of the distillation head on the teacher's classes
    ce = (math.log(5 / 3) + math.log(2.0)) / 2  # CE of the class head on the labels
    token = OBJECTIVES["token"]()
    loss = token(Outputs(cls_logits, None, distill_logits), teacher, y, alpha=0.5)
    assert loss.item() == pytest.approx(0.5 * term + 0.5 * ce, abs=1e-6)


def test_the_token_objective_needs_a_student_with_heads_and_labels(compose_tiny):
    from biaskd.config import check
    from biaskd.errors import ConfigError
    from biaskd.models.vision import MLP
    from biaskd.objectives import build_objective

    with pytest.raises(ConfigError, match="has no heads"):
        build_objective({"objective": "token", "alpha": 0.5}, MLP(num_classes=4, in_shape=(1, 8, 8)))
    with pytest.raises(ConfigError, match="'distill.alpha' must be < 1 for objective 'token'"):
        check(compose_tiny("model=vit", "model.patch=4", "model.distill_token=true", "distill=cross",
                           "objective=token", "distill.alpha=1.0"))


def test_a_vit_with_a_distillation_token_learns_from_a_cnn(compose_tiny):
    run = train(compose_tiny("model=vit", "model.patch=4", "model.dim=32", "model.heads=2", "model.distill_token=true",
                             "distill=cross", "model@teacher.model=cnn_small", "objective=token",
                             "trainer.max_epochs=10", "train.lr=3e-3"))
    assert run.is_complete and run.meta["objective"] == "token" and run.meta["alpha"] == 0.5
    assert run.metrics["splits"]["test"]["accuracy"] > 0.6  # 4 classes, chance 0.25
