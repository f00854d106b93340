import runpy
import sys
import warnings
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from analysis.report import build_report, main, markdown_table
from biaskd.record.artifacts import write_manifest
from synthetic import make_sweep

NOTEBOOK = Path(__file__).resolve().parents[2] / "analysis" / "notebooks" / "walkthrough.ipynb"


def test_report_cli_writes_markdown_figures_and_csvs(mnist_sweep, sva_sweep, tmp_path):
    out = tmp_path / "report"
    assert main([str(mnist_sweep.root), str(sva_sweep.root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for heading in ("## Runs", "## Metrics per eval split", "## Transfer ratio", "## Prediction agreement",
                    "## Representational similarity", "## Training paths", "## Calibration",
                    "Top-1 agreement by `attractors`"):
        assert heading in text
    for png in ("accuracy_mnist", "accuracy_sva", "agreement_mnist", "linear_cka_mnist", "mds_linear_cka_sva",
                "mds_predictions_mnist", "training_paths_sva", "reliability_mnist"):
        assert (out / f"{png}.png").stat().st_size > 1000, png
        assert f"({png}.png)" in text
    for csv in ("summary.csv", "transfer.csv", "paired_tests.csv", "agreement.csv", "runs_long.csv"):
        assert (out / csv).exists()
    # synthetic run dirs have no model config to rebuild, so only the weight-space basins are missing
    before, _, after = text.partition("## Basins")
    assert "Not available" not in before
    assert "Not available" not in after.partition("\n## ")[2]


def test_report_states_missing_pieces_instead_of_failing(tmp_path, recwarn):
    # one seed, the teacher missing (students name it, but it is not there), no step features
    sweep = make_sweep(tmp_path / "runs", seeds=(0,), with_teacher=False, steps=(), n=60, n_probe=20)
    out = tmp_path / "out"
    build_report([sweep.root], out)
    text = (out / "report.md").read_text()
    assert "teacher run dir 'teacher-cnn-s0' not found" in text
    assert "no run with a loadable teacher" in text
    assert "no run has probe features at intermediate training steps" in text
    assert "(n=1)" in text and "no confidence interval" in text
    assert "no teacher runs" in text  # transfer ratio note
    assert (out / "accuracy_mnist.png").exists() and (out / "linear_cka_mnist.png").exists()


def test_report_with_only_independent_runs_and_an_empty_folder(tmp_path):
    sweep = make_sweep(tmp_path / "runs", seeds=(0, 1), closeness={}, steps=(), n=60, n_probe=20)
    metrics = sweep.teachers[1] / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"ece": 0.', '"ece": 0.5', 1))  # a wrong logged ECE
    write_manifest(sweep.teachers[1])  # ... written as if trained that way
    build_report([sweep.root], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "no distilled students" in text and (tmp_path / "out" / "mds_linear_cka_mnist.png").exists()
    assert "recomputed ECE differs from metrics.json by > 1e-4 for 1 run/split" in text
    (tmp_path / "empty").mkdir()
    build_report([tmp_path / "empty"], tmp_path / "out2")
    assert "no complete run dirs" in (tmp_path / "out2" / "report.md").read_text()


def test_report_module_entry_point(tmp_path, monkeypatch):
    # what `python -m analysis.report RUNS --out DIR` runs, without paying for a new interpreter
    sweep = make_sweep(tmp_path / "runs", seeds=(0,), steps=(), n=40, n_probe=12)
    monkeypatch.setattr(sys, "argv", ["analysis.report", str(sweep.root), "--out", str(tmp_path / "o")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module("analysis.report", run_name="__main__")
    assert exit_.value.code == 0
    assert (tmp_path / "o" / "report.md").exists()


def test_markdown_table_formats_missing_values():
    import pandas as pd

    t = markdown_table(pd.DataFrame({"a": [1.23456, float("nan")], "b": ["x|y", None]}))
    assert t.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "| – | – |"]


def test_walkthrough_notebook_executes_on_synthetic_runs(sva_sweep, monkeypatch):
    monkeypatch.setenv("BIASKD_RUNS", str(sva_sweep.root))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    text = "".join(o.get("text", "") for o in outputs)
    assert "synthetic" not in text  # it used BIASKD_RUNS, not the demo fallback


def test_package_exports_resolve():
    import analysis

    for name in analysis.__all__:
        assert callable(getattr(analysis, name)), name
