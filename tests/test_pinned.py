"""Pinned results: tiny real runs of every training path and the analysis tables on them.

The reference (``tests/pinned/``) was recorded from the code as it was, with the signature of the
machine that recorded it. On that machine every weight, logit and metric must match to the bit;
on any other, within the tolerances of :mod:`biaskd.record.reproduce` (derived from a measured spread
across instruction sets). A change that alters what a run computes fails either way: the last
tests make two one-line changes of the training path and show the cross-machine check catches
them. Re-record after a deliberate change with ``python tests/pinned_runs.py --record``.
"""
import functools
import json

import pytest
import torch

import pinned_runs
from biaskd.record import reproduce

pytestmark = pytest.mark.slow

VISION = ["student", "independent"]  # with the student's teacher: the runs the analysis values need


@pytest.fixture(scope="module")
def reference():
    return pinned_runs.load_reference()


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    return pinned_runs.collect(pinned_runs.train_runs(tmp_path_factory.mktemp("pinned")))


def test_pinned_runs_match_their_record(collected, reference):
    values, weights = collected
    result = pinned_runs.compare(values, weights, *reference)
    same = reproduce.same_machine(values["machine"], reference[0]["machine"])
    assert result.how == (reproduce.BIT_IDENTICAL if same else reproduce.WITHIN_TOLERANCE)
    assert result.ok, result.line()
    # every recorded value was compared (nothing silently skipped)
    assert set(weights) == set(reference[1])
    assert set(values["metrics"]) == set(reference[0]["metrics"])
    assert set(values["analysis"]) == set(reference[0]["analysis"]) and len(values["analysis"]) == 40


def test_the_cross_machine_check_holds_where_nothing_changed(collected, reference):
    """Forced into the other-machine mode, the unchanged runs pass with room to spare (so a
    machine whose rounding differs passes too)."""
    result = pinned_runs.compare(*collected, *reference, same=False)
    assert result.ok and result.how == reproduce.WITHIN_TOLERANCE, result.line()
    assert len(result.worst) > 100  # weights of every run, logits of every split, every metric


def test_tolerances_cover_the_measured_spread_tenfold():
    spread = json.loads(pinned_runs.SPREAD.read_text())["deviations"]
    assert spread, "no kernel sets measured"
    for kernels in spread.values():
        assert max(kernels["weights_relative_by_run"].values()) * 10 <= reproduce.WEIGHT_RTOL
        assert kernels["outputs_max_relative"] * 10 <= reproduce.OUTPUT_RTOL
        assert max(kernels["loss_ece_max_abs"], kernels["analysis_max_abs"]) * 10 <= reproduce.METRIC_ATOL
        assert kernels["accuracy_max_examples"] <= 1


def _changed(tmp_path, reference, extra=()):
    values, weights = pinned_runs.collect(pinned_runs.train_runs(tmp_path, VISION, extra=list(extra)))
    return pinned_runs.compare(values, weights, *reference, names=[*VISION, "teacher"], same=False)


def test_a_one_line_change_of_the_learning_rate_fails_the_cross_machine_check(tmp_path, reference):
    """``lr: 1.0e-3`` -> ``1.01e-3`` in conf/config.yaml."""
    result = _changed(tmp_path, reference, ["train.lr=1.01e-3"])
    assert not result.ok
    assert any("outputs/" in f for f in result.failures) and any("/loss" in f for f in result.failures)


def test_a_one_line_change_of_the_optimizer_fails_the_cross_machine_check(tmp_path, reference, monkeypatch):
    """``torch.optim.Adam(params, lr=..., weight_decay=...)`` -> ``..., eps=1e-6)`` in the
    classifier module."""
    monkeypatch.setattr(torch.optim, "Adam", functools.partial(torch.optim.Adam, eps=1e-6))
    result = _changed(tmp_path, reference)
    assert not result.ok, result.line()
