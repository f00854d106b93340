"""Transfer-set sweeps read the scenario each run recorded: a task of any name is tabulated by its
recorded bias measure, and runs of several scenarios are told apart, never guessed."""

import json

import pandas as pd
import pytest

from analysis import transfer_sets
from synthetic import make_sweep, rerecord


def test_a_task_the_suite_never_saw_is_tabulated_not_dropped(tmp_path):
    sweep = make_sweep(tmp_path / "runs", task="birdsong", seeds=(0, 1, 2), steps=())
    path = transfer_sets.write([sweep.root], tmp_path / "out")
    long = pd.read_csv(path.parent / "transfer_sets.csv")
    # the generic measure: every eval split other than test, and their mean as the headline
    assert {"ood_mean", "noisy", "far_field", "test"} <= set(long["split"])
    acc = {s: json.loads((p / "metrics.json").read_text())["splits"] for s, p in sweep.independent.items()}
    control = long[(long["condition"] == transfer_sets.CONTROL) & (long["split"] == "ood_mean")]
    mean = sum((a["noisy"]["accuracy"] + a["far_field"]["accuracy"]) / 2 for a in acc.values()) / 3
    assert control["mean"].item() == pytest.approx(mean)
    assert "# Transfer-set sweep (birdsong)" in path.read_text()


def test_the_headline_follows_the_recorded_measure_not_the_task_name(tmp_path):
    sweep = make_sweep(tmp_path / "runs", task="sva", seeds=(0, 1), steps=())
    rerecord(sweep.root, scenario={"name": "agreement2", "measure": "attractors", "headline": "a_accuracy"})
    path = transfer_sets.write([sweep.root], tmp_path / "out")
    assert "attractors_mean" in set(pd.read_csv(path.parent / "transfer_sets.csv")["split"])
    assert "# Transfer-set sweep (agreement2)" in path.read_text()


def test_runs_of_scenarios_measured_differently_need_one_named(tmp_path):
    make_sweep(tmp_path / "runs" / "a", task="mnist", seeds=(0, 1), steps=())
    make_sweep(tmp_path / "runs" / "b", task="sva", teacher_model="lstm", student_model="transformer", seeds=(0, 1),
               steps=())
    with pytest.raises(SystemExit, match="give one with --scenario"):
        transfer_sets.sweep_frame([tmp_path / "runs"])
    frame, name, layout = transfer_sets.sweep_frame([tmp_path / "runs"], "vision")
    assert name == "vision" and set(frame["task"]) == {"mnist"} and layout.summary == "ood_mean"
    with pytest.raises(SystemExit, match="no complete runs of scenario 'nowhere'"):
        transfer_sets.sweep_frame([tmp_path / "runs"], "nowhere")
