"""The same cells of two scenarios side by side (analysis.compare_figure), from a map table alone."""
import math

import pandas as pd
import pytest

from analysis import compare_figure as cf
from analysis.transfer_map import MAP_COLUMNS
from biaskd.errors import ArtifactError


def _row(scenario, teacher, metric, diff, epochs=100, t=5.0, n_seeds=5):
    row = {c: math.nan for c in MAP_COLUMNS}
    row.update(scenario=scenario, teacher=teacher, student="mlp", student_epochs=epochs, temperature=t,
               transfer_n=0, objective="kd", metric=metric, n_seeds=n_seeds, m_kd=0.5 + diff, m_indep=0.5,
               m_self=0.49, m_teacher=0.9, diff_vs_independent=diff, ci_half_width=0.01)
    return row


def _map():
    rows = [_row("small", "cnn_gp", "translated", 0.10), _row("small", "cnn_gp", "ood_mean", 0.05),
            _row("small", "cnn", "translated", 0.04), _row("small", "cnn_gp", "translated", 0.07, epochs=15),
            _row("big", "cnn_gp", "translated", 0.11), _row("big", "cnn_gp", "ood_mean", 0.04),
            _row("big", "cnn_gp", "teacher_cka_probe", 0.15), _row("big", "cnn_gp", "translated", 0.02, t=1.0)]
    return pd.DataFrame(rows, columns=MAP_COLUMNS)


def test_only_the_cells_both_scenarios_have_are_compared():
    cells = cf.shared_cells(_map(), ["small", "big"])
    assert cells == [("cnn_gp", "mlp", 100, 5.0, 0, "kd")]  # cnn, 15 epochs and T = 1 are each in one only


def test_metrics_are_those_both_have_with_the_headline_first():
    assert cf.shared_metrics(_map(), ["small", "big"], "ood_mean") == ["ood_mean", "translated"]


def test_the_figure_is_drawn(tmp_path):
    path = cf.compare_figure(_map(), ["small", "big"], tmp_path / "c.png", headline="translated")
    assert path.is_file() and path.stat().st_size > 10_000


def test_scenarios_without_a_shared_cell_or_rows_get_a_clear_error(tmp_path):
    frame = _map()
    with pytest.raises(ArtifactError, match="share no cell"):
        cf.compare_figure(frame[~((frame["scenario"] == "big") & (frame["temperature"] == 5.0))], ["small", "big"],
                          tmp_path / "c.png", headline="translated")
    with pytest.raises(ArtifactError, match="no rows of scenario.*huge"):
        cf.compare_figure(frame, ["small", "huge"], tmp_path / "c.png")


def test_command_line_writes_the_default_path(tmp_path, capsys):
    _map().to_csv(tmp_path / "transfer_map.csv", index=False)
    assert cf.main([str(tmp_path), "small", "big", "--headline", "translated"]) == 0
    assert (tmp_path / "transfer_map_compare_small_vs_big.png").is_file()
    with pytest.raises(ArtifactError, match="transfer_map.csv: missing"):
        cf.main([str(tmp_path / "nowhere"), "small", "big"])
