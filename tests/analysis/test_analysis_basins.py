import numpy as np
import pytest
import torch
from torch import nn

from analysis.basins import barrier, interpolate_state_dicts, linear_path
from analysis.runs import load_run


def _factory():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _trained_state(seed, steps):
    torch.manual_seed(seed)
    m = _factory()
    x = torch.randn(32, 4)
    for _ in range(steps):
        m(x)  # updates BatchNorm running stats and num_batches_tracked
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_interpolate_state_dicts_endpoints_midpoint_and_integer_buffers():
    a, b = _trained_state(0, 3), _trained_state(1, 5)
    assert int(a["1.num_batches_tracked"]) == 3
    for k in a:
        torch.testing.assert_close(interpolate_state_dicts(a, b, 0.0)[k], a[k])
    mid = interpolate_state_dicts(a, b, 0.5)
    torch.testing.assert_close(mid["0.weight"], (a["0.weight"] + b["0.weight"]) / 2)
    torch.testing.assert_close(mid["1.running_var"], (a["1.running_var"] + b["1.running_var"]) / 2)
    assert mid["1.num_batches_tracked"].dtype == torch.int64 and int(mid["1.num_batches_tracked"]) == 3
    one = interpolate_state_dicts(a, b, 1.0)
    torch.testing.assert_close(one["3.bias"], b["3.bias"])
    assert int(one["1.num_batches_tracked"]) == 3  # integers always come from A


def test_interpolate_state_dicts_rejects_mismatch():
    a, b = _trained_state(0, 1), _trained_state(1, 1)
    with pytest.raises(ValueError, match="different keys"):
        interpolate_state_dicts(a, {k: v for k, v in b.items() if k != "3.bias"}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(a, {**b, "3.bias": torch.zeros(4)}, 0.5)


def test_linear_path_evaluates_endpoints_exactly():
    a, b = _trained_state(0, 2), _trained_state(1, 2)
    x, y = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3

    def eval_fn(model):
        logits = model(x)
        return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    path = linear_path(_factory, a, b, eval_fn, lambdas=[0, 0.25, 0.5, 0.75, 1])
    assert list(path.columns) == ["lambda", "loss", "accuracy"] and len(path) == 5
    for lam, sd in ((0, a), (1, b)):
        m = _factory()
        m.load_state_dict(sd)
        m.eval()
        with torch.no_grad():
            assert path.loc[path["lambda"] == lam, "loss"].item() == pytest.approx(eval_fn(m)[0])
    calls = []
    linear_path(_factory, a, b, eval_fn, lambdas=[0, 1], prepare_fn=lambda m: calls.append(m.training))
    assert calls == [True, True]


def test_barrier_hand_computed():
    assert barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert barrier([0, 0.25, 0.5, 0.75, 1], [2.0, 1.0, 0.5, 1.0, 2.0]) == 0.0  # convex: no barrier
    assert barrier(np.array([1.0, 0.0, 0.5]), [4.0, 2.0, 3.5]) == pytest.approx(0.5)  # unsorted
    with pytest.raises(ValueError, match="include 0 and 1"):
        barrier([0.1, 0.5, 1.0], [1, 2, 3])


def test_state_dicts_load_from_run_dirs(sva_sweep):
    run = load_run(sva_sweep.students[("cross", 1)])
    assert run.checkpoint_steps() == [0, 500, 1000]
    sd0, final = run.state_dict(0), run.state_dict()
    torch.testing.assert_close(final["0.weight"], run.state_dict(1000)["0.weight"])
    model = lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))  # noqa: E731
    x = torch.randn(16, 4)

    def loss(m):
        return float(m(x).pow(2).mean()), 0.0

    path = linear_path(model, sd0, final, loss, lambdas=[0, 0.5, 1])
    mid = model()
    mid.load_state_dict({k: (sd0[k] + final[k]) / 2 for k in sd0})
    with torch.no_grad():
        assert path["loss"][1] == pytest.approx(loss(mid)[0], rel=1e-6)
    l0, l_mid, l1 = path["loss"]
    assert barrier(path["lambda"], path["loss"]) == pytest.approx(max(0.0, l_mid - (l0 + l1) / 2))
    # identical end points: a flat path, no barrier
    flat = linear_path(model, final, final, loss, lambdas=[0, 0.3, 0.7, 1])
    assert flat["loss"].nunique() == 1
    assert barrier(flat["lambda"], flat["loss"]) == pytest.approx(0.0, abs=1e-12)
