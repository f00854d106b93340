"""kd_loss against values worked out by hand (DESIGN.md, "KD loss")."""
import math

import pytest
import torch

from biaskd.losses import cross_entropy, kd_loss

# One example, two classes, T = 2.
# teacher logits (0, 2 ln 3) / T = (0, ln 3)  -> p = (1/4, 3/4)
# student logits (0, 0)                       -> q = (1/2, 1/2)
# KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2);  CE(y=0) = ln 2;  T^2 = 4
KL = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
CE = math.log(2)
T_LOGITS = torch.tensor([[0.0, 2 * math.log(3)]])
S_LOGITS = torch.tensor([[0.0, 0.0]])
Y = torch.tensor([0])


@pytest.mark.parametrize("alpha, expected", [(0.0, CE), (0.5, 0.5 * 4 * KL + 0.5 * CE), (1.0, 4 * KL)])
def test_kd_loss_hand_computed(alpha, expected):
    got = kd_loss(S_LOGITS, T_LOGITS, Y, temperature=2.0, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.shape == ()


def test_kd_loss_without_t_squared_is_papers_variant():
    got = kd_loss(S_LOGITS, T_LOGITS, Y, temperature=2.0, alpha=1.0, t_squared=False)
    assert got.item() == pytest.approx(KL, rel=1e-6)


def test_kd_loss_is_batch_mean():
    # second example: teacher = student -> KL 0; label 1 with logits (0, ln 3): CE = -ln(3/4)
    s = torch.cat([S_LOGITS, torch.tensor([[0.0, math.log(3)]])])
    t = torch.cat([T_LOGITS, torch.tensor([[0.0, math.log(3)]])])
    y = torch.tensor([0, 1])
    got = kd_loss(s, t, y, temperature=2.0, alpha=0.5)
    expected = 0.5 * ((0.5 * 4 * KL + 0.5 * CE) + (0.5 * 0.0 + 0.5 * -math.log(0.75)))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_gradient_is_alpha_T_q_minus_p_over_batch(temperature):
    torch.manual_seed(0)
    batch, alpha = 5, 0.7
    s = torch.randn(batch, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(batch, 4, dtype=torch.float64)
    loss = kd_loss(s, t, None if alpha == 1 else torch.zeros(batch, dtype=torch.long),
                   temperature=temperature, alpha=alpha)
    # gradient of the KD part alone: subtract the CE part's known gradient (softmax(s) - onehot)(1-alpha)/batch
    loss.backward()
    q = torch.softmax(s.detach() / temperature, -1)
    p = torch.softmax(t / temperature, -1)
    onehot = torch.zeros(batch, 4, dtype=torch.float64)
    onehot[:, 0] = 1
    ce_grad = (1 - alpha) * (torch.softmax(s.detach(), -1) - onehot) / batch
    kd_grad = alpha * temperature * (q - p) / batch
    torch.testing.assert_close(s.grad, kd_grad + ce_grad, rtol=1e-5, atol=1e-7)


def test_kd_loss_zero_when_student_equals_teacher_and_pure_kd():
    z = torch.randn(3, 5)
    assert kd_loss(z, z.clone(), None, temperature=4.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_mask_ignores_positions():
    s = torch.stack([S_LOGITS[0], torch.tensor([5.0, -5.0])]).unsqueeze(0)  # (1, 2 positions, 2)
    t = torch.stack([T_LOGITS[0], torch.tensor([-5.0, 5.0])]).unsqueeze(0)
    got = kd_loss(s, t, None, temperature=2.0, alpha=1.0, mask=torch.tensor([[True, False]]))
    assert got.item() == pytest.approx(4 * KL, rel=1e-6)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"alpha": 1.5}, {"alpha": -0.1}])
def test_kd_loss_rejects_bad_hyperparameters(kwargs):
    args = {"temperature": 1.0, "alpha": 0.5} | kwargs
    with pytest.raises(ValueError):
        kd_loss(S_LOGITS, T_LOGITS, Y, **args)


def test_kd_loss_needs_labels_unless_pure_distillation():
    with pytest.raises(ValueError, match="labels"):
        kd_loss(S_LOGITS, T_LOGITS, None, alpha=0.5)


def test_cached_and_forward_teacher_give_the_same_kd_loss():
    from biaskd.models.vision import CNN, MLP
    from biaskd.modules.distill import DistillModule

    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28)
    batch = {"x": x[:8], "y": torch.randint(0, 10, (8,)), "idx": torch.arange(8)}
    teacher, student = CNN().eval(), MLP()
    with torch.no_grad():
        table = teacher(x)
    table[8:16] = 10 * torch.randn(8, 10)  # rows the batch does not index must not matter
    cached = DistillModule(student, teacher_logits=table, temperature=5.0, alpha=0.7)
    forward = DistillModule(student, teacher=teacher, teacher_outputs="forward", temperature=5.0, alpha=0.7)
    a, b = cached.loss_step(batch, 0), forward.loss_step(batch, 0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # and the cached lookup really is by example index: another batch of the table differs
    other = dict(batch, idx=torch.arange(8, 16))
    assert abs(cached.loss_step(other, 0).item() - a.item()) > 0.1


def test_cross_entropy_skips_unlabelled_examples():
    from biaskd.losses import UNLABELLED

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    labels = torch.tensor([0, UNLABELLED, 1])
    # hand-computed: mean of -log softmax over the two labelled rows
    expected = (math.log(1 + math.exp(-2.0)) + math.log(math.exp(3.0) + math.exp(-1.0)) - (-1.0)) / 2
    assert cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert cross_entropy(logits, torch.full((3,), UNLABELLED)).item() == 0.0
    # a pure-distillation loss never reads labels, so unlabelled rows change nothing there
    assert kd_loss(logits, logits.flip(0), labels, alpha=1.0).item() == pytest.approx(
        kd_loss(logits, logits.flip(0), None, alpha=1.0).item())
