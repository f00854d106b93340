"""kd_loss against values worked out by hand (docs/design.md, "Training objective")."""
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
    from biaskd.modules.distill import CachedOutputs, DistillModule, FrozenTeacher
    from biaskd.objectives.kd import SoftTargets

    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28)
    batch = {"x": x[:8], "y": torch.randint(0, 10, (8,)), "idx": torch.arange(8)}
    teacher, student = CNN().eval(), MLP()
    with torch.no_grad():
        table = teacher(x)
    table[8:16] = 10 * torch.randn(8, 10)  # rows the batch does not index must not matter
    cached = DistillModule(student, SoftTargets(5.0), CachedOutputs(table), alpha=0.7)
    forward = DistillModule(student, SoftTargets(5.0), FrozenTeacher(teacher), alpha=0.7)
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


# -- the cached-teacher fast path: log softmax(z_t / T) computed once -----------------------------
@pytest.mark.parametrize("alpha, t_squared", [(1.0, True), (0.7, True), (0.3, False), (0.0, True)])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kd_loss_from_log_probs_matches_kd_loss_and_its_gradient(alpha, t_squared, temperature):
    from biaskd.losses import kd_loss_from_log_probs, teacher_log_probs

    g = torch.Generator().manual_seed(1)
    t = 3 * torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    y[:3] = -1  # unlabelled rows are skipped by the CE term on both paths
    s1 = torch.randn(16, 10, generator=g).requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    a = kd_loss(s1, t, y, temperature=temperature, alpha=alpha, t_squared=t_squared)
    b = kd_loss_from_log_probs(s2, teacher_log_probs(t, temperature), y, temperature=temperature, alpha=alpha,
                               t_squared=t_squared)
    a.backward()
    b.backward()
    assert abs(a.item() - b.item()) <= 1e-6
    torch.testing.assert_close(s2.grad, s1.grad, rtol=0, atol=1e-6)


def test_kd_loss_from_log_probs_against_an_independent_formula():
    # the reference written out once more with softmax / log and a per-example loop
    from biaskd.losses import kd_loss_from_log_probs, teacher_log_probs

    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    T = 3.0
    p, q = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    expected = T * T * sum(float((p[i] * (p[i].log() - q[i].log())).sum()) for i in range(6)) / 6
    got = kd_loss_from_log_probs(s, teacher_log_probs(t, T), None, temperature=T, alpha=1.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_kd_loss_from_log_probs_with_mask_matches_kd_loss():
    from biaskd.losses import kd_loss_from_log_probs, teacher_log_probs

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y = torch.randint(0, 7, (2, 5), generator=g)
    a = kd_loss(s, t, y, temperature=2.0, alpha=0.6, mask=mask)
    b = kd_loss_from_log_probs(s, teacher_log_probs(t, 2.0), y, temperature=2.0, alpha=0.6, mask=mask)
    assert abs(a.item() - b.item()) <= 1e-6


def test_kd_loss_from_log_probs_checks_like_kd_loss():
    from biaskd.losses import kd_loss_from_log_probs, teacher_log_probs

    log_p = teacher_log_probs(T_LOGITS, 2.0)
    with pytest.raises(ValueError, match="labels"):
        kd_loss_from_log_probs(S_LOGITS, log_p, None, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError):
        kd_loss_from_log_probs(S_LOGITS, log_p, Y, temperature=0.0, alpha=1.0)
    with pytest.raises(ValueError, match="shape"):
        kd_loss_from_log_probs(torch.zeros(1, 3), log_p, None, temperature=2.0, alpha=1.0)
    # the hand-computed value of the top of this file, through the cached path
    assert kd_loss_from_log_probs(S_LOGITS, log_p, Y, temperature=2.0, alpha=0.5).item() == pytest.approx(
        0.5 * 4 * KL + 0.5 * CE, rel=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_cached_log_prob_step_equals_kd_loss_and_forward_teacher(alpha):
    """DistillModule's cached path (a log-prob table made once) gives kd_loss's loss and gradient
    on the same batch, and the same loss as a teacher forward on that batch."""
    from biaskd.models.vision import CNN, MLP
    from biaskd.modules.distill import CachedOutputs, DistillModule, FrozenTeacher
    from biaskd.objectives.kd import SoftTargets

    torch.manual_seed(0)
    x = torch.rand(24, 1, 28, 28)
    teacher = CNN().eval()
    with torch.no_grad():
        table = teacher(x)
    student = MLP()
    batch = {"x": x[4:20], "y": torch.randint(0, 10, (16,)), "idx": torch.arange(4, 20)}
    cached = DistillModule(student, SoftTargets(4.0), CachedOutputs(table), alpha=alpha)
    forward = DistillModule(student, SoftTargets(4.0), FrozenTeacher(teacher), alpha=alpha)

    student.zero_grad()
    loss = cached.loss_step(batch, 0)
    loss.backward()
    grads = [p.grad.clone() for p in student.parameters()]
    assert cached._teacher_log_p is not None  # the table was made (once) and used

    student.zero_grad()
    ref = kd_loss(student(batch["x"]), table[batch["idx"]], batch["y"], temperature=4.0, alpha=alpha)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-6
    for g, p in zip(grads, student.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-6)
    assert abs(forward.loss_step(batch, 0).item() - loss.item()) <= 1e-6
    # the table follows a new T
    cached.objective.temperature = 1.0
    ref1 = kd_loss(student(batch["x"]), table[batch["idx"]], batch["y"], temperature=1.0, alpha=alpha)
    assert abs(cached.loss_step(batch, 0).item() - ref1.item()) <= 1e-6
